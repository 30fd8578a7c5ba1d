package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// helloV makes a hello package: version v, greeting g, and extra manifest text.
func helloV(t *testing.T, e *testEnv, root, v, g, extra string) []byte {
	t.Helper()
	return pkg(t, e.key, root, `
name: hello
version: `+v+`
command: ["/hello", "--listen", ":8080"]
env: {GREETING: `+g+`}
stop_timeout: 2s
probation: 1s
health: {http: {port: 8080, path: /healthz}, interval: 100ms, timeout: 100ms, retries: 2}
`+extra)
}

// answer is hello's answer once it listens: running means its process was
// started, not that it has bound its port yet.
func (e *testEnv) answer(t *testing.T) string {
	t.Helper()
	var body string
	waitFor(t, "hello answering", 20*time.Second, func() bool {
		st := e.status("hello")
		if st.Pid == 0 || st.State != StateRunning {
			return false
		}
		var err error
		body, err = tryGet(st.Pid, "/")
		return err == nil
	})
	return body
}

func TestUpdateCommitsAfterProbationAndKeepsPrevious(t *testing.T) {
	e := newEnv(t)
	root := helloRoot(t)
	e.install(helloV(t, e, root, "1.0.0", "one", ""))
	if _, err := e.agent.Install(e.ctx, bytes.NewReader(helloV(t, e, root, "1.1.0", "two", ""))); err != nil {
		t.Fatal(err)
	}
	st := e.status("hello")
	if st.Version != "1.1.0" || st.Previous != "1.0.0" || st.Update != "" {
		t.Fatalf("after update: %+v", st)
	}
	if got := e.answer(t); got != "two from hello 1.0.0\n" {
		t.Fatalf("new version answered %q", got)
	}
	// A third version drops the first (N-1 is kept, N-2 collected).
	if _, err := e.agent.Install(e.ctx, bytes.NewReader(helloV(t, e, root, "1.2.0", "three", ""))); err != nil {
		t.Fatal(err)
	}
	if got := dirEntries(t, filepath.Join(e.cfg.DataDir, "apps", "hello")); !slices.Equal(got, []string{"1.1.0", "1.2.0"}) {
		t.Fatalf("bundles kept: %v", got)
	}
	// tern device rollback returns to N-1.
	if _, err := e.agent.Rollback(e.ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	if st := e.status("hello"); st.Version != "1.1.0" || st.Previous != "" {
		t.Fatalf("after rollback: %+v", st)
	}
	if got := e.answer(t); got != "two from hello 1.0.0\n" {
		t.Fatalf("rolled-back version answered %q", got)
	}
	events, _ := e.agent.Events(0)
	var transitions []string
	for _, ev := range events {
		if ev.Kind == "update" {
			transitions = append(transitions, ev.To)
		}
	}
	if !slices.Contains(transitions, "probation") || !slices.Contains(transitions, "committed") {
		t.Fatalf("events: %v", transitions)
	}
}

func TestFailedUpdatesRollBackAndTheOldVersionAnswers(t *testing.T) {
	cases := []struct {
		name, extra string
		command     string
	}{
		{"crashes in probation", "", `["/bin/sh", "-c", "sleep 0.3; exit 7"]`},
		{"health check fails", "", ""},
		{"cannot start", "", `["/no/such/program"]`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			root := helloRoot(t)
			bb := busyboxRoot(t)
			os.Rename(filepath.Join(bb, "bin"), filepath.Join(root, "bin"))
			e.install(helloV(t, e, root, "1.0.0", "old", ""))
			bad := helloV(t, e, root, "2.0.0", "new", "")
			switch {
			case tc.command != "":
				bad = pkg(t, e.key, root, "name: hello\nversion: 2.0.0\nprobation: 1s\nstop_timeout: 1s\ncommand: "+tc.command+"\n")
			case tc.name == "health check fails":
				bad = pkg(t, e.key, root, `
name: hello
version: 2.0.0
command: ["/hello", "--listen", ":8080"]
probation: 2s
health: {tcp: 9999, interval: 100ms, timeout: 100ms, retries: 2}
`)
			}
			_, err := e.agent.Install(e.ctx, bytes.NewReader(bad))
			if !errors.Is(err, ErrUpdateAbort) {
				t.Fatalf("Install = %v, want a rollback", err)
			}
			st := e.status("hello")
			if st.Version != "1.0.0" || st.Update != "" {
				t.Fatalf("after rollback: %+v", st)
			}
			if got := e.answer(t); got != "old from hello 1.0.0\n" {
				t.Fatalf("old version answered %q", got)
			}
			if got := dirEntries(t, filepath.Join(e.cfg.DataDir, "apps", "hello")); !slices.Equal(got, []string{"1.0.0"}) {
				t.Fatalf("bundles after rollback: %v", got)
			}
		})
	}
}

func TestMultiAppTransactionIsAllOrNothing(t *testing.T) {
	e := newEnv(t)
	root := busyboxRoot(t)
	mk := func(name, v, cmd string) []byte {
		return pkg(t, e.key, root, "name: "+name+"\nversion: "+v+"\nprobation: 1s\nstop_timeout: 1s\ncommand: [\"/bin/sh\", \"-c\", \""+cmd+"\"]\n")
	}
	e.install(mk("alpha", "1.0.0", "sleep 1000"))
	e.install(mk("beta", "1.0.0", "sleep 1000"))
	_, err := e.agent.Install(e.ctx, bytes.NewReader(mk("alpha", "1.1.0", "sleep 1000")), bytes.NewReader(mk("beta", "1.1.0", "sleep 0.2; exit 1")))
	if !errors.Is(err, ErrUpdateAbort) {
		t.Fatalf("Install = %v, want a rollback", err)
	}
	for _, n := range []string{"alpha", "beta"} {
		if st := e.status(n); st.Version != "1.0.0" || st.State != StateRunning {
			t.Fatalf("%s after a failed transaction: %+v", n, st)
		}
	}
	// Both good: both commit.
	if _, err := e.agent.Install(e.ctx, bytes.NewReader(mk("alpha", "1.2.0", "sleep 1000")), bytes.NewReader(mk("beta", "1.2.0", "sleep 1000"))); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"alpha", "beta"} {
		if st := e.status(n); st.Version != "1.2.0" || st.Previous != "1.0.0" {
			t.Fatalf("%s after a good transaction: %+v", n, st)
		}
	}
}

func TestDowngradeIsRefusedUnlessSignedAllowed(t *testing.T) {
	e := newEnv(t)
	root := helloRoot(t)
	e.install(helloV(t, e, root, "2.0.0", "two", ""))
	if _, err := e.agent.Install(e.ctx, bytes.NewReader(helloV(t, e, root, "1.0.0", "one", ""))); !errors.Is(err, ErrDowngrade) {
		t.Fatalf("downgrade: %v", err)
	}
	if st := e.status("hello"); st.Version != "2.0.0" {
		t.Fatalf("after refused downgrade: %+v", st)
	}
	if _, err := e.agent.Install(e.ctx, bytes.NewReader(helloV(t, e, root, "1.0.0", "one", "allow_downgrade: true\n"))); err != nil {
		t.Fatalf("allowed downgrade: %v", err)
	}
	if st := e.status("hello"); st.Version != "1.0.0" {
		t.Fatalf("after allowed downgrade: %+v", st)
	}
}

func TestFullDiskRefusesUpdateAndKeepsRunningVersion(t *testing.T) {
	e := newEnv(t)
	// A small data dir of its own: a 48 MiB tmpfs.
	small := filepath.Join(e.dir, "small")
	os.MkdirAll(small, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", small).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	e.cleanup()
	t.Cleanup(func() {
		e.cleanup() // before the tmpfs goes: no container may outlive the test
		exec.Command("umount", "-l", small).Run()
	})
	e.cfg.DataDir = filepath.Join(small, "data")
	e.start()
	root := helloRoot(t)
	e.install(helloV(t, e, root, "1.0.0", "one", ""))
	big := filepath.Join(root, "big")
	blob := make([]byte, 40<<20)
	rand.Read(blob)
	os.WriteFile(big, blob, 0o644)
	_, err := e.agent.Install(e.ctx, bytes.NewReader(helloV(t, e, root, "1.1.0", "two", "")))
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "MiB are free") {
		t.Fatalf("Install on a full disk = %v", err)
	}
	if st := e.status("hello"); st.Version != "1.0.0" || st.State != StateRunning {
		t.Fatalf("after refused update: %+v", st)
	}
	if got := e.answer(t); got != "one from hello 1.0.0\n" {
		t.Fatalf("answered %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if list, _ := e.agent.List(ctx); len(list) != 1 {
		t.Fatalf("apps: %+v", list)
	}
}
