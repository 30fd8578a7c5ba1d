package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/link"
)

// Problem is an error answer of the API (RFC 9457).
type Problem struct {
	Status int    `json:"status"`
	Title  string `json:"title"`
	Detail string `json:"detail,omitempty"`
}

func (p *Problem) Error() string {
	if p.Detail != "" {
		return fmt.Sprintf("%s (HTTP %d): %s", p.Title, p.Status, p.Detail)
	}
	return fmt.Sprintf("%s (HTTP %d)", p.Title, p.Status)
}

// Client calls the API of one server with one API key, trusting the server by the
// pinned fingerprint of its CA.
type Client struct {
	URL  string
	Key  string
	http *http.Client
}

// NewClient returns a client for the server at url.
func NewClient(url, key, caFingerprint string) *Client {
	return &Client{URL: strings.TrimSuffix(url, "/"), Key: key, http: &http.Client{
		Transport: &http.Transport{TLSClientConfig: link.PinnedTLS(caFingerprint)},
	}}
}

// Do sends a request with a JSON body (if in is not nil) and decodes the JSON
// answer into out (if not nil). An error answer is returned as a *Problem.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	contentType := ""
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, contentType = bytes.NewReader(data), "application/json"
	}
	return c.send(ctx, method, path, contentType, body, out)
}

// Upload POSTs body, of contentType, as it reads it (a release's packages are
// streamed, never held in memory), and decodes the JSON answer into out.
func (c *Client) Upload(ctx context.Context, path, contentType string, body io.Reader, out any) error {
	return c.send(ctx, http.MethodPost, path, contentType, body, out)
}

func (c *Client) send(ctx context.Context, method, path, contentType string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.URL+path, body)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Authorization", "Bearer "+c.Key)
	res, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 32<<20))
	if err != nil {
		return err
	}
	if res.StatusCode >= 400 {
		p := &Problem{Status: res.StatusCode, Title: http.StatusText(res.StatusCode)}
		json.Unmarshal(data, p)
		return p
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Follow streams the account's events (Server-Sent Events) to fn, starting after
// seq after (-1: from now), reconnecting after a dropped stream, until ctx ends or
// fn returns an error.
func (c *Client) Follow(ctx context.Context, after int64, fn func(json.RawMessage) error) error {
	for {
		err := c.follow(ctx, &after, fn)
		if ctx.Err() != nil {
			return nil
		}
		var p *Problem
		if errors.As(err, &p) || errors.Is(err, errStop) {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

var errStop = errors.New("stop")

func (c *Client) follow(ctx context.Context, after *int64, fn func(json.RawMessage) error) error {
	path := "/api/v1/events"
	if *after >= 0 {
		path += fmt.Sprintf("?after=%d", *after)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Key)
	req.Header.Set("Accept", "text/event-stream")
	res, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		p := &Problem{Status: res.StatusCode, Title: http.StatusText(res.StatusCode)}
		json.NewDecoder(res.Body).Decode(p)
		return p
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "id: "); ok {
			fmt.Sscan(v, after)
		}
		if v, ok := strings.CutPrefix(line, "data: "); ok {
			if err := fn(json.RawMessage(v)); err != nil {
				return fmt.Errorf("%w: %v", errStop, err)
			}
		}
	}
	return sc.Err()
}

// FetchCAFingerprint connects to the server without trusting it and returns the
// fingerprint of the last certificate of its chain (its CA), for a user to check
// and pin (trust on first use).
func FetchCAFingerprint(ctx context.Context, addr string) (string, error) {
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", errors.New("server sent no certificate")
	}
	sum := sha256.Sum256(certs[len(certs)-1].Raw)
	return hex.EncodeToString(sum[:]), nil
}

// Lines GETs path, which answers JSON lines (a device's logs), and hands each line
// to fn as it arrives, until the answer ends, ctx ends or fn returns an error.
func (c *Client) Lines(ctx context.Context, path string, fn func(json.RawMessage) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Key)
	res, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer res.Body.Close()
	if res.StatusCode >= 400 {
		p := &Problem{Status: res.StatusCode, Title: http.StatusText(res.StatusCode)}
		json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(p)
		return p
	}
	dec := json.NewDecoder(res.Body)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if err == io.EOF || ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := fn(raw); err != nil {
			return err
		}
	}
}
