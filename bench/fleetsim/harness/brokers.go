package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/loopback"
	"github.com/tern-iot/tern/internal/server"
)

// brokerTree is the harness's external MQTT deployment for fleets larger than one
// process holds connections for: several Mosquitto "edge" brokers that devices
// connect to (mutual TLS, the server's ACL), each bridged to one "central"
// Mosquitto that `tern server --broker` connects to. Device-to-server topics are
// bridged out of the edges, desired-state documents in; the bridges use a
// loopback-only listener of the central broker without TLS (they run on this
// machine; across machines they would use TLS too). The bridges speak MQTT 3.1.1
// (Mosquitto's own bridge extension keeps retained flags): Debian's Mosquitto 2.0.11
// closes an MQTT 5 bridge's CONNECT as a protocol error.
type brokerTree struct {
	central string   // host:port of the central broker's TLS listener, for the server
	edges   []string // mqtts:// URLs devices connect to
	procs   []*exec.Cmd
}

// mosquittoBin finds Debian's mosquitto.
func mosquittoBin() (string, error) {
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto", nil
	}
	return "", errors.New("mosquitto not found (apt-get install mosquitto)")
}

// reserveCentralAddr picks the central broker's TLS address before the server starts
// (the server is told it, and writes the files the brokers need).
func reserveCentralAddr() (string, error) {
	p, err := loopback.LaterPort()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", p), nil
}

// startBrokerTree starts the central broker on central and n edge brokers, with
// the TLS and ACL files the server wrote in serverData/broker.
func startBrokerTree(ctx context.Context, dir, serverData, central string, n int) (*brokerTree, error) {
	bin, err := mosquittoBin()
	if err != nil {
		return nil, err
	}
	files := filepath.Join(serverData, "broker")
	// The server writes them as it starts; wait for the last one.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(files, "acl")); err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("the server wrote no broker files in %s", files)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	tlsListener := func(hostport string) string { return server.MosquittoListener(serverData, hostport) }
	// Queues unbounded and no inflight cap: a campaign sends one document per
	// device through the central broker's bridges in a burst.
	common := func(name string) string {
		return fmt.Sprintf(`persistence false
user root
max_queued_messages 0
max_inflight_messages 0
log_dest file %s
log_type error
log_type warning
`, filepath.Join(dir, name+".log"))
	}
	bp, err := loopback.LaterPort()
	if err != nil {
		return nil, err
	}
	bridgeAddr := fmt.Sprintf("127.0.0.1:%d", bp)
	t := &brokerTree{central: central}
	centralConf := "per_listener_settings true\n" + common("central") + tlsListener(central) +
		fmt.Sprintf("\nlistener %d 127.0.0.1\nallow_anonymous true\n", bp)
	if err := t.start(bin, dir, "central", centralConf, central); err != nil {
		t.stop()
		return nil, err
	}
	p := link.TopicPrefix + "+/"
	for i := range n {
		port, err := loopback.LaterPort()
		if err != nil {
			t.stop()
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		name := fmt.Sprintf("edge%d", i)
		conf := common(name) + tlsListener(addr) + fmt.Sprintf(`
connection %s
address %s
notifications false
cleansession true
restart_timeout 1
topic %s out 1
topic %s out 1
topic %s out 1
topic %s out 1
topic %s in 1
`, name, bridgeAddr, p+link.TopicStatus, p+link.TopicReported, p+link.TopicEvents, p+link.TopicLogs, p+link.TopicDesired)
		if err := t.start(bin, dir, name, conf, addr); err != nil {
			t.stop()
			return nil, err
		}
		t.edges = append(t.edges, "mqtts://"+addr)
	}
	return t, nil
}

func (t *brokerTree) start(bin, dir, name, conf, addr string) error {
	path := filepath.Join(dir, name+".conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return err
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "-c", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	t.procs = append(t.procs, cmd)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for i := 0; ; i++ {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, name+".log"))
			return fmt.Errorf("mosquitto %s exited: %v\n%s%s", name, err, out.String(), log)
		default:
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		if i > 200 {
			return fmt.Errorf("mosquitto %s did not listen on %s", name, addr)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// pids are the brokers' processes, central first.
func (t *brokerTree) pids() []int {
	var ps []int
	for _, c := range t.procs {
		ps = append(ps, c.Process.Pid)
	}
	return ps
}

// sample sums the brokers' CPU, RSS and descriptors.
func (t *brokerTree) sample() procSample {
	s := procSample{At: time.Now()}
	if t == nil {
		return s
	}
	for _, pid := range t.pids() {
		p := sampleProc(pid)
		s.CPU += p.CPU
		s.RSS += p.RSS
		s.FDs = max(s.FDs, p.FDs)
	}
	return s
}

func (t *brokerTree) stop() {
	if t == nil {
		return
	}
	for _, c := range t.procs {
		c.Process.Kill()
	}
}

// describe names the topology for the report.
func (t *brokerTree) describe() string {
	return fmt.Sprintf("%d Mosquitto edge brokers bridged to a central one (%s)", len(t.edges), strings.Join(t.edges, ", "))
}
