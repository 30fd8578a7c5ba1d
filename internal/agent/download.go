package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// resumingBody reads a blob over HTTP and, when the connection is cut, asks for
// the rest with a Range request and carries on, backing off while the server is
// out of reach. It never reads past size; the package reader checks the digest.
type resumingBody struct {
	ctx  context.Context
	hc   *http.Client
	url  string
	size int64
	log  *slog.Logger

	off      int64
	body     io.ReadCloser
	attempts int
}

// maxResumes bounds the reconnections for one blob: a server that keeps cutting
// gets the download refused (and retried with the next desired-state delivery).
const maxResumes = 30

func (r *resumingBody) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	for {
		if r.body == nil {
			if err := r.open(); err != nil {
				return 0, err
			}
		}
		if rest := r.size - r.off; int64(len(p)) > rest {
			p = p[:rest]
		}
		n, err := r.body.Read(p)
		r.off += int64(n)
		if n > 0 || err == nil {
			if r.off >= r.size {
				return n, io.EOF
			}
			return n, nil
		}
		// Cut (or the server said less than it should): resume from r.off.
		r.body.Close()
		r.body = nil
		r.log.Warn("download cut; resuming", "url", r.url, "at", r.off, "err", err)
	}
}

func (r *resumingBody) open() error {
	for {
		if r.attempts > maxResumes {
			return fmt.Errorf("download %s: gave up after %d attempts", r.url, r.attempts)
		}
		if r.attempts > 0 {
			delay := min(250*time.Millisecond<<min(r.attempts, 7), 30*time.Second)
			select {
			case <-r.ctx.Done():
				return r.ctx.Err()
			case <-time.After(delay):
			}
		}
		r.attempts++
		req, err := http.NewRequestWithContext(r.ctx, http.MethodGet, r.url, nil)
		if err != nil {
			return err
		}
		if r.off > 0 {
			req.Header.Set("Range", "bytes="+strconv.FormatInt(r.off, 10)+"-")
		}
		resp, err := r.hc.Do(req)
		if err != nil {
			if r.ctx.Err() != nil {
				return r.ctx.Err()
			}
			continue
		}
		switch {
		case resp.StatusCode == http.StatusPartialContent && r.off > 0,
			resp.StatusCode == http.StatusOK && r.off == 0:
			r.body = resp.Body
			return nil
		case resp.StatusCode == http.StatusOK:
			// The server ignored the range: skip what we have.
			if _, err := io.CopyN(io.Discard, resp.Body, r.off); err != nil {
				resp.Body.Close()
				continue
			}
			r.body = resp.Body
			return nil
		case resp.StatusCode >= 500:
			resp.Body.Close()
			continue
		default:
			resp.Body.Close()
			return fmt.Errorf("download %s: %s", r.url, resp.Status)
		}
	}
}

func (r *resumingBody) Close() error {
	if r.body != nil {
		return r.body.Close()
	}
	return nil
}
