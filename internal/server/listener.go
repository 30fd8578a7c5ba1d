package server

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"time"
)

// handshakeListener is the HTTPS listener: it runs the TLS handshakes itself, at
// most a bounded number at once, and hands completed connections to the HTTP
// server. The next connection waits in the kernel's accept queue.
//
// Without a bound, a campaign phase that gives thousands of devices their
// document at once starts thousands of handshakes (devices fetching manifests and
// blobs) that share the CPU, all finish late and miss their deadline; the
// devices report the download as failed. Bounded, they are served first come,
// first served.
type handshakeListener struct {
	net.Listener
	cfg     *tls.Config
	timeout time.Duration
	log     *slog.Logger
	conns   chan net.Conn

	once sync.Once
	done chan struct{}
}

// maxHTTPSHandshakes bounds the handshakes the HTTPS listener runs at once.
func maxHTTPSHandshakes() int { return 32 * runtime.GOMAXPROCS(0) }

func newHandshakeListener(ln net.Listener, cfg *tls.Config, timeout time.Duration, log *slog.Logger) *handshakeListener {
	l := &handshakeListener{Listener: ln, cfg: cfg, timeout: timeout, log: log, conns: make(chan net.Conn), done: make(chan struct{})}
	go l.run(maxHTTPSHandshakes())
	return l
}

func (l *handshakeListener) run(n int) {
	slots := make(chan struct{}, n)
	var delay time.Duration
	for {
		select {
		case slots <- struct{}{}:
		case <-l.done:
			return
		}
		conn, err := l.Listener.Accept()
		if err != nil {
			<-slots
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				l.stop()
				return
			}
			// Out of descriptors (EMFILE) or an aborted connection: wait and
			// accept again, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("https accept failed; retrying", "err", err, "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		go func() {
			conn.SetDeadline(time.Now().Add(l.timeout))
			tc := tls.Server(conn, l.cfg)
			ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
			err := tc.HandshakeContext(ctx)
			cancel()
			<-slots
			if err != nil {
				l.log.Debug("https tls handshake failed", "remote", conn.RemoteAddr().String(), "err", err)
				conn.Close()
				return
			}
			conn.SetDeadline(time.Time{})
			select {
			case l.conns <- tc:
			case <-l.done:
				tc.Close()
			}
		}()
	}
}

// Accept returns the next connection whose handshake completed.
func (l *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handshakeListener) Close() error {
	err := l.Listener.Close()
	l.stop()
	return err
}

func (l *handshakeListener) stop() { l.once.Do(func() { close(l.done) }) }
