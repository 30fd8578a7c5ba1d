package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ExecProtocol is the HTTP Upgrade token of an exec stream. After the 101
// answer both directions carry frames: a type byte, a 4-byte big-endian
// length, and that many bytes (at most maxFrame).
const ExecProtocol = "tern-exec/1"

// Exec frame types.
const (
	FrameStdin      byte = 'i' // client: bytes for the process's stdin
	FrameStdinClose byte = 'c' // client: stdin reached its end
	FrameResize     byte = 'r' // client: terminal size, 2+2 bytes (columns, rows)
	FrameStdout     byte = 'o' // device: the process's stdout (with a TTY: the terminal)
	FrameStderr     byte = 'e' // device: the process's stderr
	FrameExit       byte = 'x' // device: 4-byte exit code (128+signal if killed); the end
	FrameError      byte = 'E' // device: exec failed, message; the end
	maxFrame             = 64 << 10
)

// ExecRequest is the body of POST /v1/apps/{name}/exec.
type ExecRequest struct {
	Cmd  []string `json:"cmd"`
	TTY  bool     `json:"tty,omitempty"`  // run on a pseudo-terminal (interactive shells)
	Env  []string `json:"env,omitempty"`  // KEY=VALUE added to the app's environment (TERM)
	Cols uint16   `json:"cols,omitempty"` // initial terminal size, with TTY
	Rows uint16   `json:"rows,omitempty"`
}

// FrameWriter writes exec frames; safe for concurrent use.
type FrameWriter struct {
	mu sync.Mutex
	W  io.Writer
}

// WriteFrame writes one frame (and flushes W if it buffers).
func (f *FrameWriter) WriteFrame(typ byte, payload []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := f.W.Write(hdr[:]); err != nil {
		return err
	}
	if _, err := f.W.Write(payload); err != nil {
		return err
	}
	if fl, ok := f.W.(interface{ Flush() error }); ok {
		return fl.Flush()
	}
	return nil
}

// stream returns a writer whose writes become frames of type typ.
func (f *FrameWriter) stream(typ byte) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		for off := 0; off < len(p); off += maxFrame {
			if err := f.WriteFrame(typ, p[off:min(len(p), off+maxFrame)]); err != nil {
				return off, err
			}
		}
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// ReadFrame reads one frame.
func ReadFrame(r io.Reader) (typ byte, payload []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("exec stream: frame of %d bytes", n)
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(r, payload)
	return hdr[0], payload, err
}

// serveExec runs a command in an app's running container and streams it over
// the upgraded connection.
func (a *Agent) serveExec(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req ExecRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil || len(req.Cmd) == 0 {
		problem(w, http.StatusBadRequest, "bad exec request", "want a JSON body with a non-empty cmd")
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), ExecProtocol) {
		problem(w, http.StatusBadRequest, "bad exec request", "exec streams over Upgrade: "+ExecProtocol)
		return
	}
	if _, err := a.store.App(name); err != nil {
		reply(w, nil, err)
		return
	}
	s, ok := a.supervisorOf(name)
	var pid int
	if ok {
		_, pid, _, _, _ = s.status()
	}
	if pid == 0 {
		problem(w, http.StatusConflict, "conflict", name+" is not running")
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		problem(w, http.StatusInternalServerError, "internal error", err.Error())
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Time{})
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", ExecProtocol)
	if err := brw.Flush(); err != nil {
		return
	}
	// The stream ends with the request (the LAN server closing ends it too),
	// with ternd, or when the client goes away.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stopAgent := context.AfterFunc(a.ctx, cancel)
	defer stopAgent()
	fw := &FrameWriter{W: brw}
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		fw.WriteFrame(FrameError, []byte(err.Error()))
		return
	}
	defer stdinR.Close()
	resize := make(chan [2]uint16, 4)
	go func() {
		defer stdinW.Close()
		for {
			typ, p, err := ReadFrame(brw.Reader)
			if err != nil {
				cancel() // the client is gone: kill the process
				return
			}
			switch typ {
			case FrameStdin:
				stdinW.Write(p)
			case FrameStdinClose:
				stdinW.Close()
			case FrameResize:
				if len(p) == 4 {
					select {
					case resize <- [2]uint16{binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:])}:
					default:
					}
				}
			}
		}
	}()
	a.log.Info("exec", "app", name, "cmd", req.Cmd[0], "tty", req.TTY, "remote", r.RemoteAddr)
	code, err := a.runExec(ctx, s.id, req, stdinR, fw.stream(FrameStdout), fw.stream(FrameStderr), resize)
	if err != nil {
		fw.WriteFrame(FrameError, []byte(err.Error()))
		return
	}
	fw.WriteFrame(FrameExit, binary.BigEndian.AppendUint32(nil, uint32(int32(code))))
}

// runExec runs req.Cmd in container id with `runc exec`, as the container's
// user, in its namespaces and cgroup, with its capabilities and seccomp filter.
//
// With a TTY, runc runs attached (not -d) with `-t`: it makes the terminal in
// the container, receives its master over its own console socket (SCM_RIGHTS)
// and relays it to its stdio, which is a pseudo-terminal made here; a resize
// is set on ours and passed on by SIGWINCH. `--console-socket` would hand us
// the master directly, but runc accepts it only with -d, and a detached
// process is reparented to the host's init, so its exit status would be lost
// to ternd (conmon keeps it by being a child subreaper, which ternd, whose
// containers must outlive it, is not).
func (a *Agent) runExec(ctx context.Context, id string, req ExecRequest, stdin *os.File, stdout, stderr io.Writer, resize <-chan [2]uint16) (int, error) {
	runc := a.cfg.RuncPath
	if runc == "" {
		runc = "runc"
	}
	runc, err := exec.LookPath(runc)
	if err != nil {
		return -1, err
	}
	root := a.cfg.RuncRoot
	if root == "" {
		root = "/run/tern/runc"
	}
	pidFile := filepath.Join(os.TempDir(), fmt.Sprintf("tern-exec-%s-%d.pid", id, time.Now().UnixNano()))
	defer os.Remove(pidFile)
	args := []string{"--root", root, "exec", "--pid-file", pidFile}
	for _, e := range req.Env {
		if strings.Contains(e, "=") {
			args = append(args, "--env", e)
		}
	}
	if req.TTY {
		args = append(args, "-t")
	}
	args = append(append(args, id), req.Cmd...)
	cmd := exec.CommandContext(ctx, runc, args...)
	// Killing runc would leave the process running in the container: kill
	// the process, and runc exits with its status.
	cmd.Cancel = func() error {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				return unix.Kill(pid, unix.SIGKILL)
			}
		}
		return cmd.Process.Kill()
	}
	cmd.WaitDelay = 2 * time.Second
	var copied chan struct{}
	if req.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return -1, err
		}
		defer master.Close()
		if req.Cols > 0 && req.Rows > 0 {
			setWinsize(master, req.Cols, req.Rows)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		err = cmd.Start()
		slave.Close()
		if err != nil {
			return -1, err
		}
		copied = make(chan struct{})
		go func() {
			io.Copy(stdout, master) // ends with EIO once runc, the last holder of the slave, exits
			close(copied)
		}()
		go io.Copy(master, stdin)
		go func() {
			for {
				select {
				case sz := <-resize:
					setWinsize(master, sz[0], sz[1])
					cmd.Process.Signal(syscall.SIGWINCH)
				case <-copied:
					return
				}
			}
		}()
	} else {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
		if err := cmd.Start(); err != nil {
			return -1, err
		}
	}
	err = cmd.Wait()
	if copied != nil {
		select {
		case <-copied:
		case <-time.After(2 * time.Second):
		}
	}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exitErr):
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return exitErr.ExitCode(), nil
	case errors.Is(err, exec.ErrWaitDelay):
		return 0, nil
	}
	return -1, fmt.Errorf("exec: %w", err)
}

// openPTY makes a pseudo-terminal pair.
func openPTY() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var n int
	var ierr error
	err = control(master, func(fd int) {
		if ierr = unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); ierr == nil {
			n, ierr = unix.IoctlGetInt(fd, unix.TIOCGPTN)
		}
	})
	if err == nil {
		err = ierr
	}
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("pty: %w", err)
	}
	slave, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("pty: %w", err)
	}
	return master, slave, nil
}

func setWinsize(f *os.File, cols, rows uint16) {
	control(f, func(fd int) {
		unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Col: cols, Row: rows})
	})
}

// control runs fn on f's descriptor without taking it out of the runtime's
// poller (as Fd would).
func control(f *os.File, fn func(fd int)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}
