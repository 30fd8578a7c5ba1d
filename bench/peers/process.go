package peers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"github.com/tern-iot/tern/internal/loopback"
)

// Process starts the app as a plain process: fork/exec of its binary with its
// arguments plus --listen 127.0.0.1:PORT (a free port per instance), no isolation.
// It is the floor every container start is compared with.
type Process struct {
	Binary string
	Env    []string

	mu    sync.Mutex
	procs map[string]*exec.Cmd
	ports map[string]int
}

func (p *Process) Name() string { return "plain process" }

// Port is instance id's port, chosen (a free loopback port) on first use.
func (p *Process) Port(id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ports == nil {
		p.procs, p.ports = map[string]*exec.Cmd{}, map[string]int{}
	}
	if p.ports[id] == 0 {
		p.ports[id], _ = loopback.LaterPort()
	}
	return p.ports[id]
}

// Start forks and execs the binary; it returns once the process exists.
func (p *Process) Start(ctx context.Context, id string) error {
	port := p.Port(id)
	if port == 0 {
		return fmt.Errorf("process %s: no free port", id)
	}
	cmd := exec.Command(p.Binary, "--listen", "127.0.0.1:"+strconv.Itoa(port))
	cmd.Env = p.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer null.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	if err := cmd.Start(); err != nil {
		return err
	}
	p.mu.Lock()
	p.procs[id] = cmd
	p.mu.Unlock()
	return nil
}

// Stop kills the process and reaps it.
func (p *Process) Stop(ctx context.Context, id string) error {
	p.mu.Lock()
	cmd := p.procs[id]
	delete(p.procs, id)
	delete(p.ports, id)
	p.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("process %s: not started", id)
	}
	cmd.Process.Kill()
	cmd.Wait()
	return nil
}
