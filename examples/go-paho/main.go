// go-paho: the small Go program from the talk this project grew from.
//
// It connects to an MQTT broker with the Eclipse Paho Go client, subscribes to a topic
// with a message handler that prints every message as "received <topic> <payload>",
// publishes -n messages to that topic and exits 0 once all of them have arrived, or
// non-zero when they have not arrived within -timeout.
//
// Build it with Debian's packages (golang-go, golang-github-eclipse-paho.mqtt.golang-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o go-paho ./examples/go-paho
//	./go-paho -broker tcp://127.0.0.1:1883 -n 10 -qos 1
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func main() {
	broker := flag.String("broker", "tcp://127.0.0.1:1883", "broker address")
	topic := flag.String("topic", "tern/go-paho", "topic to subscribe and publish to")
	count := flag.Int("n", 10, "number of messages to publish")
	qos := flag.Int("qos", 1, "QoS of the subscription and the publishes (0, 1 or 2)")
	clientID := flag.String("client-id", fmt.Sprintf("go-paho-%d", os.Getpid()), "client identifier")
	timeout := flag.Duration("timeout", 30*time.Second, "give up when the messages have not all arrived by then")
	flag.Parse()

	if *qos < 0 || *qos > 2 {
		fail("-qos must be 0, 1 or 2, not %d", *qos)
	}
	if *count < 0 {
		fail("-n must not be negative")
	}

	opts := mqtt.NewClientOptions().
		AddBroker(*broker).
		SetClientID(*clientID).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetKeepAlive(30 * time.Second).
		SetConnectTimeout(10 * time.Second).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			fail("connection lost: %v", err)
		})
	client := mqtt.NewClient(opts)
	if tok := client.Connect(); !tok.WaitTimeout(*timeout) || tok.Error() != nil {
		fail("connect to %s: %v", *broker, tokenError(tok))
	}
	defer client.Disconnect(250)

	arrived := make(chan struct{}, *count+16)
	handler := func(_ mqtt.Client, msg mqtt.Message) {
		fmt.Printf("received %s %s\n", msg.Topic(), msg.Payload())
		arrived <- struct{}{}
	}
	if tok := client.Subscribe(*topic, byte(*qos), handler); !tok.WaitTimeout(*timeout) || tok.Error() != nil {
		fail("subscribe to %s: %v", *topic, tokenError(tok))
	}

	for i := 0; i < *count; i++ {
		payload := fmt.Sprintf("message-%d", i)
		if tok := client.Publish(*topic, byte(*qos), false, payload); !tok.WaitTimeout(*timeout) || tok.Error() != nil {
			fail("publish %s: %v", payload, tokenError(tok))
		}
	}

	deadline := time.After(*timeout)
	for got := 0; got < *count; got++ {
		select {
		case <-arrived:
		case <-deadline:
			fail("timed out: %d of %d messages arrived", got, *count)
		}
	}
	fmt.Printf("done %d\n", *count)
}

func tokenError(tok mqtt.Token) error {
	if err := tok.Error(); err != nil {
		return err
	}
	return fmt.Errorf("timed out")
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go-paho: "+format+"\n", args...)
	os.Exit(1)
}
