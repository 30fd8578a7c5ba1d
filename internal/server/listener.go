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
	var retry acceptRetry
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
			retry.wait(l.log, "https", err)
			continue
		}
		retry.reset()
		go func() {
			tc, err := handshake(conn, l.cfg, l.timeout)
			<-slots
			if err != nil {
				l.log.Debug("https tls handshake failed", "remote", conn.RemoteAddr().String(), "err", err)
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

// handshake runs conn's TLS handshake as the server, bounded by timeout (the
// connection's deadline, which it leaves set). On failure it closes conn.
func handshake(conn net.Conn, cfg *tls.Config, timeout time.Duration) (*tls.Conn, error) {
	conn.SetDeadline(time.Now().Add(timeout))
	tc := tls.Server(conn, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return tc, nil
}

// acceptRetry is what the server's listeners do after an accept error that is
// not their closing - out of descriptors (EMFILE), a connection aborted before
// it was accepted: wait, 5 ms doubling to 1 s, and accept again, as net/http
// does. Returning would stop the listener taking any connection, for good.
type acceptRetry struct{ delay time.Duration }

func (r *acceptRetry) wait(log *slog.Logger, listener string, err error) {
	r.delay = min(max(2*r.delay, 5*time.Millisecond), time.Second)
	log.Warn(listener+" accept failed; retrying", "err", err, "in", r.delay)
	time.Sleep(r.delay)
}

func (r *acceptRetry) reset() { r.delay = 0 }
