//! MQTT topic names and topic filters: validation, matching, and the relations between
//! filters that the ACL needs.
//!
//! Everything here works on `&str` and allocates nothing. Topics are split into levels at
//! `/`; an empty level is a real level (`a//b` has three levels, `/a` has two).
//!
//! The `$` rule (MQTT 3.1.1 §4.7.2, 5.0 §4.7.2): a filter whose first level is `+` or `#`
//! never matches a topic whose name starts with `$` (such as `$SYS/...`), so a client that
//! subscribes to `#` does not receive the broker's own statistics. Every function here
//! honours it.

/// Longest topic name or filter an MQTT UTF-8 string can carry, in bytes.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The prefix of a shared subscription filter: `$share/{group}/{filter}`.
pub const SHARE_PREFIX: &str = "$share/";

/// Why a topic name or filter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    #[error("topic contains the null character U+0000")]
    NullChar,
    #[error("a topic name must not contain the wildcards '+' or '#'")]
    WildcardInName,
    #[error("'#' must be a whole level and the last level of a filter")]
    BadMultiLevelWildcard,
    #[error("'+' must be a whole level of a filter")]
    BadSingleLevelWildcard,
    #[error("the group of a shared subscription must be non-empty and contain no '+', '#' or '/'")]
    BadShareGroup,
    #[error("a shared subscription needs a topic filter after its group")]
    MissingShareFilter,
}

/// The parts of a `$share/{group}/{filter}` subscription, borrowed from the original.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    /// The topic filter that messages are matched against (valid, non-empty).
    pub filter: &'a str,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullChar);
    }
    Ok(())
}

/// Checks a topic name as a client may PUBLISH to it: non-empty, at most 65535 bytes,
/// no wildcards, no U+0000.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if has_wildcards(topic) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter as a client may SUBSCRIBE to it: non-empty, at most 65535 bytes,
/// no U+0000, `+` only as a whole level, `#` only as the whole last level.
///
/// A `$share/...` filter is syntactically an ordinary filter and passes here; use
/// [`parse_shared`] to split and check it as a shared subscription.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Splits a `$share/{group}/{filter}` subscription into its group and filter, checking
/// both. Returns `Ok(None)` for a filter that is not shared (the caller validates it as an
/// ordinary filter). `$share` without a following `/` is an ordinary filter.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        // `$share/group` with nothing after the group: either the group is bad too, or
        // the filter is missing.
        return Err(if rest.is_empty() || rest.contains(['+', '#']) {
            TopicError::BadShareGroup
        } else {
            TopicError::MissingShareFilter
        });
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError::BadShareGroup);
    }
    if inner.is_empty() {
        return Err(TopicError::MissingShareFilter);
    }
    validate_topic_filter(inner)?;
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// True if `filter` contains a `+` or `#` wildcard.
pub fn has_wildcards(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// True if the first level of `filter` is a wildcard, so the filter cannot match a topic
/// that starts with `$`.
fn first_level_is_wildcard(filter: &str) -> bool {
    matches!(filter.split('/').next(), Some("+" | "#"))
}

/// MQTT matching of a topic name against a (valid) filter: `+` matches exactly one level,
/// `#` matches zero or more trailing levels (so `a/#` matches `a`), and a filter that starts
/// with a wildcard does not match a topic that starts with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && first_level_is_wildcard(filter) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// One level of a filter, as the relations below see it. A `#` in the first level can
/// match no fewer than one level (every topic has at least one), so there it behaves as
/// `+/#`; [`normalise`] rewrites it so.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level<'a> {
    Lit(&'a str),
    Plus,
    Hash,
}

fn level(s: &str) -> Level<'_> {
    match s {
        "+" => Level::Plus,
        "#" => Level::Hash,
        l => Level::Lit(l),
    }
}

/// Iterates a filter's levels, with a leading `#` expanded to `+`, `#`.
fn normalise(filter: &str) -> impl Iterator<Item = Level<'_>> {
    let leading_hash = filter == "#";
    let expansion = leading_hash
        .then_some([Level::Plus, Level::Hash])
        .into_iter()
        .flatten();
    let rest = filter.split('/').filter(move |_| !leading_hash).map(level);
    expansion.chain(rest)
}

fn is_dollar_literal(l: Level<'_>) -> bool {
    matches!(l, Level::Lit(s) if s.starts_with('$'))
}

/// True if every topic that `filter` matches is also matched by `pattern`: the test for
/// "may a client subscribe to `filter` when an ACL rule grants `pattern`".
///
/// `sensors/+/#` covers `sensors/a/b/+` and `sensors/+/x`; `a/+` does not cover `a/#`
/// (which matches `a` and `a/b/c`); `#` does not cover `$SYS/#` (the `$` rule); `+/#`
/// covers `#`. Both arguments are assumed to be valid filters.
pub fn filter_covers(pattern: &str, filter: &str) -> bool {
    let mut p = normalise(pattern);
    let mut f = normalise(filter);
    let mut first = true;
    loop {
        let (pl, fl) = (p.next(), f.next());
        // The `$` rule: a wildcard first level in `pattern` never reaches a `$` topic.
        if first
            && matches!(pl, Some(Level::Plus | Level::Hash))
            && fl.is_some_and(is_dollar_literal)
        {
            return false;
        }
        first = false;
        match (pl, fl) {
            // `#` (past the first level) matches whatever `filter` still has, or nothing.
            (Some(Level::Hash), _) => return true,
            (Some(Level::Plus), Some(Level::Plus | Level::Lit(_))) => {}
            (Some(Level::Lit(a)), Some(Level::Lit(b))) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if at least one topic is matched by both filters. The ACL uses it for deny rules:
/// a subscription that could receive any denied topic is refused.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut x = normalise(a);
    let mut y = normalise(b);
    let mut first = true;
    loop {
        let (xl, yl) = (x.next(), y.next());
        if first {
            let wild = |l: Option<Level<'_>>| matches!(l, Some(Level::Plus | Level::Hash));
            let dollar = |l: Option<Level<'_>>| l.is_some_and(is_dollar_literal);
            if (wild(xl) && dollar(yl)) || (dollar(xl) && wild(yl)) {
                return false;
            }
        }
        first = false;
        match (xl, yl) {
            // A `#` past the first level matches any continuation of the other filter
            // (and every valid filter matches at least one topic).
            (Some(Level::Hash), _) | (_, Some(Level::Hash)) => return true,
            (Some(Level::Plus), Some(_)) | (Some(_), Some(Level::Plus)) => {}
            (Some(Level::Lit(s)), Some(Level::Lit(t))) if s == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("$SYS/x"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullChar));
        assert_eq!(validate_topic_name(&"a".repeat(MAX_TOPIC_LEN)), Ok(()));
        assert_eq!(
            validate_topic_name(&"a".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a//b",
            "+/a/#",
            "$SYS/#",
            "$share/g/a",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter("a\0"), Err(TopicError::NullChar));
        for bad in ["a/#/b", "a#", "#/", "a/b#", "##"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::BadMultiLevelWildcard),
                "{bad}"
            );
        }
        for bad in ["a+", "a/+b", "++", "+a/b"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::BadSingleLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn shared_filters() {
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(parse_shared("$share"), Ok(None));
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(
            parse_shared("$share/g/#"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "#"
            }))
        );
        assert_eq!(
            parse_shared("$share/g//"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "/"
            }))
        );
        assert_eq!(parse_shared("$share/"), Err(TopicError::BadShareGroup));
        assert_eq!(parse_shared("$share//a"), Err(TopicError::BadShareGroup));
        assert_eq!(parse_shared("$share/+/a"), Err(TopicError::BadShareGroup));
        assert_eq!(parse_shared("$share/g#/a"), Err(TopicError::BadShareGroup));
        assert_eq!(
            parse_shared("$share/g"),
            Err(TopicError::MissingShareFilter)
        );
        assert_eq!(
            parse_shared("$share/g/"),
            Err(TopicError::MissingShareFilter)
        );
        assert_eq!(
            parse_shared("$share/g/a/#/b"),
            Err(TopicError::BadMultiLevelWildcard)
        );
    }

    #[test]
    fn matching() {
        let yes = [
            ("a/b", "a/b"),
            ("a/+", "a/b"),
            ("a/#", "a"),
            ("a/#", "a/b/c"),
            ("#", "a/b"),
            ("+/+", "/x"),
            ("+", ""),
            ("a/+/c", "a//c"),
            ("$SYS/#", "$SYS/x"),
            ("$SYS/+", "$SYS/x"),
        ];
        for (f, t) in yes {
            assert!(matches(f, t), "{f} should match {t}");
        }
        let no = [
            ("a/b", "a"),
            ("a", "a/b"),
            ("a/+", "a"),
            ("a/+", "a/b/c"),
            ("+", "a/b"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("+", "$x"),
            ("a/b/#", "a"),
        ];
        for (f, t) in no {
            assert!(!matches(f, t), "{f} should not match {t}");
        }
    }

    #[test]
    fn covering() {
        let yes = [
            ("sensors/+/#", "sensors/a/b/+"),
            ("sensors/+/#", "sensors/+/x"),
            ("sensors/+/#", "sensors/a"),
            ("sensors/#", "sensors"),
            ("#", "#"),
            ("#", "a/+/#"),
            ("+/#", "#"),
            ("#", "+/#"),
            ("a/+", "a/b"),
            ("a/+", "a/+"),
            ("$SYS/#", "$SYS/+/x"),
        ];
        for (p, f) in yes {
            assert!(filter_covers(p, f), "{p} should cover {f}");
        }
        let no = [
            ("a/+", "a/#"),
            ("a/b", "a/+"),
            ("a/+/#", "a/#"),
            ("+", "#"),
            ("+/+/#", "#"),
            ("#", "$SYS/#"),
            ("+/#", "$SYS/x"),
            ("a", "a/b"),
            ("a/b", "a"),
        ];
        for (p, f) in no {
            assert!(!filter_covers(p, f), "{p} should not cover {f}");
        }
    }

    #[test]
    fn overlapping() {
        let yes = [
            ("#", "a"),
            ("a/+", "+/b"),
            ("a/#", "a"),
            ("secret/#", "#"),
            ("+/#", "#"),
            ("$SYS/#", "$SYS/+"),
        ];
        for (a, b) in yes {
            assert!(
                filters_overlap(a, b) && filters_overlap(b, a),
                "{a} should overlap {b}"
            );
        }
        let no = [
            ("#", "$SYS/#"),
            ("+/x", "$SYS/+"),
            ("a/+", "a"),
            ("a/b", "a/c"),
            ("+", "a/b"),
            ("a/b/#", "a"),
        ];
        for (a, b) in no {
            assert!(
                !filters_overlap(a, b) && !filters_overlap(b, a),
                "{a} should not overlap {b}"
            );
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// A straightforward reference matcher, written independently of `matches`.
        fn naive_matches(filter: &str, topic: &str) -> bool {
            let f: Vec<&str> = filter.split('/').collect();
            let t: Vec<&str> = topic.split('/').collect();
            if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
                return false;
            }
            fn rec(f: &[&str], t: &[&str]) -> bool {
                match (f.first(), t.first()) {
                    (Some(&"#"), _) => true,
                    (Some(&"+"), Some(_)) => rec(&f[1..], &t[1..]),
                    (Some(a), Some(b)) if a == b => rec(&f[1..], &t[1..]),
                    (None, None) => true,
                    _ => false,
                }
            }
            rec(&f, &t)
        }

        const WORDS: [&str; 5] = ["a", "b", "", "$s", "c"];

        /// Joins levels into a topic or filter; an empty string (not a valid topic) becomes
        /// `a`.
        fn join(levels: Vec<&str>) -> String {
            let s = levels.join("/");
            if s.is_empty() {
                "a".to_string()
            } else {
                s
            }
        }

        fn topic() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(&WORDS[..]), 1..5).prop_map(join)
        }

        fn filter() -> impl Strategy<Value = String> {
            let lvl = prop::sample::select(&["a", "b", "", "$s", "+", "+", "c"][..]);
            (prop::collection::vec(lvl, 0..5), any::<bool>()).prop_map(|(mut v, hash)| {
                if hash {
                    v.push("#");
                }
                join(v)
            })
        }

        /// Filters over a smaller alphabet, for the exhaustive checks below.
        fn small_filter() -> impl Strategy<Value = String> {
            let lvl = prop::sample::select(&["a", "b", "$s", "+", "+"][..]);
            (prop::collection::vec(lvl, 0..5), any::<bool>()).prop_map(|(mut v, hash)| {
                if hash {
                    v.push("#");
                }
                join(v)
            })
        }

        /// Every topic of up to 6 levels over the literals of `small_filter` plus an
        /// unrelated one: enough to witness any difference between two such filters
        /// (at most 5 levels each).
        fn witnesses() -> &'static [String] {
            static W: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
            W.get_or_init(|| {
                let alphabet = ["a", "b", "$s", "z"];
                let mut out: Vec<String> = Vec::new();
                let mut layer: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
                for _ in 0..6 {
                    out.extend(layer.iter().cloned());
                    layer = layer
                        .iter()
                        .flat_map(|t| alphabet.iter().map(move |l| format!("{t}/{l}")))
                        .collect();
                }
                out
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn matches_agrees_with_reference(f in filter(), t in topic()) {
                prop_assert_eq!(matches(&f, &t), naive_matches(&f, &t));
            }

            #[test]
            fn generated_filters_are_valid(f in filter(), t in topic()) {
                prop_assert_eq!(validate_topic_filter(&f), Ok(()));
                prop_assert_eq!(validate_topic_name(&t), Ok(()));
            }

            /// `filter_covers` is sound (never claims coverage that a topic refutes) and
            /// complete (when it says no, some topic shows it).
            #[test]
            fn covers_is_exact(p in small_filter(), f in small_filter()) {
                let counterexample = witnesses().iter().find(|t| matches(&f, t) && !matches(&p, t));
                prop_assert_eq!(filter_covers(&p, &f), counterexample.is_none(), "witness {:?}", counterexample);
            }

            #[test]
            fn covers_implies_matches(p in filter(), f in filter(), t in topic()) {
                if filter_covers(&p, &f) && matches(&f, &t) {
                    prop_assert!(matches(&p, &t));
                }
            }

            #[test]
            fn overlap_is_exact(a in small_filter(), b in small_filter()) {
                let common = witnesses().iter().find(|t| matches(&a, t) && matches(&b, t));
                prop_assert_eq!(filters_overlap(&a, &b), common.is_some(), "witness {:?}", common);
            }
        }
    }
}
