package agent

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const shellYAML = `
name: shell
version: 1.0.0
command: ["/bin/sleep", "3600"]
user: "1234:2345"
stop_timeout: 1s
`

// execClient serves the agent's API on a unix socket and returns a client of it.
func execClient(t *testing.T, e *testEnv) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ternd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: e.agent.Handler()}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	c, err := NewClient("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestExecStreamsOutputStdinAndExitCode(t *testing.T) {
	e := newEnv(t)
	e.install(pkg(t, e.key, busyboxRoot(t), shellYAML))
	c := execClient(t, e)
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	for _, tc := range []struct {
		name           string
		req            ExecRequest
		stdin          string
		code           int
		stdout, stderr string
	}{
		{name: "output and code", req: ExecRequest{Cmd: []string{"/bin/sh", "-c", "echo out; echo err >&2; exit 7"}},
			code: 7, stdout: "out\n", stderr: "err\n"},
		{name: "as the app's user", req: ExecRequest{Cmd: []string{"/bin/id"}}, stdout: "uid=1234(appuser) gid=2345(apps)"},
		{name: "stdin", req: ExecRequest{Cmd: []string{"/bin/cat"}}, stdin: "line one\nline two\n", stdout: "line one\nline two\n"},
		{name: "tty", req: ExecRequest{Cmd: []string{"/bin/sh", "-c", "[ -t 0 ] && echo terminal; exit 3"}, TTY: true, Cols: 80, Rows: 24},
			code: 3, stdout: "terminal\r\n"},
		{name: "killed by a signal", req: ExecRequest{Cmd: []string{"/bin/sh", "-c", "kill -9 $$"}}, code: 137},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code, err := c.Exec(ctx, "shell", tc.req, ExecIO{Stdin: strings.NewReader(tc.stdin), Stdout: &out, Stderr: &errb})
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.code || !strings.HasPrefix(out.String(), tc.stdout) || errb.String() != tc.stderr {
				t.Fatalf("code %d stdout %q stderr %q; want %d %q %q", code, out.String(), errb.String(), tc.code, tc.stdout, tc.stderr)
			}
		})
	}
	// A client that goes away takes its process with it.
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancelShort()
	start := time.Now()
	if _, err := c.Exec(short, "shell", ExecRequest{Cmd: []string{"/bin/sleep", "30"}}, ExecIO{}); err == nil {
		t.Fatal("exec outlived its context")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("exec did not end with its context")
	}
	var apiErr *APIError
	if _, err := c.Exec(ctx, "nosuch", ExecRequest{Cmd: []string{"/bin/true"}}, ExecIO{}); !errors.As(err, &apiErr) || apiErr.Status != http.StatusNotFound {
		t.Fatalf("exec in an unknown app: %v", err)
	}
	e.agent.Stop(ctx, "shell")
	if _, err := c.Exec(ctx, "shell", ExecRequest{Cmd: []string{"/bin/true"}}, ExecIO{}); !errors.As(err, &apiErr) || apiErr.Status != http.StatusConflict {
		t.Fatalf("exec in a stopped app: %v", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	fw := &FrameWriter{W: &buf}
	fw.WriteFrame(FrameStdout, []byte("hello"))
	fw.WriteFrame(FrameExit, []byte{0, 0, 0, 7})
	f.Add(buf.Bytes())
	f.Add([]byte{'o', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			_, p, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(p) > maxFrame {
				t.Fatalf("frame of %d bytes", len(p))
			}
		}
	})
}
