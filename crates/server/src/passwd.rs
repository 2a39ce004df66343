//! `tern passwd`: turns a password into the argon2id PHC string that `[[auth.users]]`
//! stores. The password comes from `--password`, or the first line of stdin (typed at a
//! terminal with echo off, or piped in).

use std::io::{self, BufRead, IsTerminal, Write};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("cannot read the password from stdin: {0}")]
    Read(#[from] io::Error),
    #[error("the password is empty")]
    Empty,
    #[error("the two passwords differ")]
    Mismatch,
}

/// The password to hash: `given` if set, else read from stdin.
pub fn read_password(given: Option<String>) -> Result<String, PasswdError> {
    let password = match given {
        Some(password) => password,
        None if io::stdin().is_terminal() => {
            let first = prompt("Password: ")?;
            let second = prompt("Again: ")?;
            if first != second {
                return Err(PasswdError::Mismatch);
            }
            first
        }
        None => first_line(io::stdin().lock())?,
    };
    if password.is_empty() {
        return Err(PasswdError::Empty);
    }
    Ok(password)
}

/// What `tern passwd` prints: the hash alone, or with `username` a whole
/// `[[auth.users]]` entry ready to paste.
pub fn render(hash: &str, username: Option<&str>) -> String {
    match username {
        None => format!("{hash}\n"),
        Some(name) => {
            let mut table = toml::Table::new();
            table.insert("username".into(), name.into());
            table.insert("password_hash".into(), hash.into());
            format!("[[auth.users]]\n{table}")
        }
    }
}

/// The first line of `input`, without its line ending.
fn first_line(mut input: impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
}

/// Reads one line from the terminal without echoing it (best effort: if `stty` is not
/// available the input is echoed).
fn prompt(label: &str) -> io::Result<String> {
    let mut stderr = io::stderr();
    write!(stderr, "{label}")?;
    stderr.flush()?;
    let echo_off = stty("-echo");
    let line = first_line(io::stdin().lock());
    if echo_off {
        stty("echo");
        writeln!(stderr)?;
    }
    line
}

fn stty(setting: &str) -> bool {
    Command::new("stty")
        .arg(setting)
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_drops_the_line_ending_only() {
        assert_eq!(first_line(&b"secret\n"[..]).unwrap(), "secret");
        assert_eq!(first_line(&b"secret\r\nmore\n"[..]).unwrap(), "secret");
        assert_eq!(first_line(&b" spaced \n"[..]).unwrap(), " spaced ");
        assert_eq!(first_line(&b"no newline"[..]).unwrap(), "no newline");
        assert_eq!(first_line(&b""[..]).unwrap(), "");
    }

    #[test]
    fn rendered_entry_is_valid_config() {
        let text = render(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
            Some("ali\"ce"),
        );
        let config: crate::config::Config = toml::from_str(&text).unwrap();
        assert_eq!(config.auth.users.len(), 1);
        assert_eq!(config.auth.users[0].username, "ali\"ce");
        assert!(config.validate().is_ok());
        assert_eq!(render("$h", None), "$h\n");
    }
}
