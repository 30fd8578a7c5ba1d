package fleetsim

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tern-iot/tern/internal/link"
)

// Provision enrolls one device per directory in dirs through the server's
// enrollment API, concurrency requests at a time over a pool of kept-alive
// HTTPS connections (pinned to the token's CA fingerprint, as a device pins it),
// and writes each identity in the layout link.LoadIdentity reads. It is what a
// factory line does for a batch of devices: each device still gets its own P-256
// key and a certificate for it, and the server does all it does for an
// enrollment (token check and use, certificate, directory entry, event); only the
// devices' files are written without fsync, and TLS sessions are reused.
//
// A directory that already holds an identity is kept. Provision returns the
// device ids in the order of dirs, and stops at the first error.
func Provision(ctx context.Context, serverURL, token string, dirs []string, concurrency int) ([]string, error) {
	tok, err := link.ParseToken(token)
	if err != nil {
		return nil, err
	}
	if concurrency <= 0 {
		concurrency = 16
	}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		TLSClientConfig:     link.PinnedTLS(tok.CAFingerprint),
		MaxIdleConnsPerHost: concurrency,
	}}
	defer client.CloseIdleConnections()
	endpoint := strings.TrimSuffix(serverURL, "/") + link.EnrollPath
	ids := make([]string, len(dirs))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(dirs) {
					return
				}
				if id, err := link.LoadIdentity(dirs[i]); err == nil {
					ids[i] = id.DeviceID
					continue
				}
				id, err := provisionOne(ctx, client, endpoint, serverURL, tok.Credential(), dirs[i])
				if err != nil {
					fail(fmt.Errorf("device %d: %w", i, err))
					return
				}
				ids[i] = id
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return ids, ctx.Err()
}

// provisionOne enrolls one device and writes its identity directory.
func provisionOne(ctx context.Context, client *http.Client, endpoint, serverURL, credential, dir string) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return "", err
	}
	body, _ := json.Marshal(link.EnrollRequest{Token: credential,
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))})
	var res link.EnrollResponse
	for attempt := 0; ; attempt++ {
		err = enrollPost(ctx, client, endpoint, body, &res)
		if err == nil || errors.Is(err, link.ErrEnrollRefused) || attempt == 4 || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond) // a dropped connection: ask again (same key, same device)
	}
	if err != nil {
		return "", err
	}
	if res.Status != link.EnrollActive {
		return "", fmt.Errorf("enrollment %s: provisioning needs a token without manual approval", res.Status)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", err
	}
	// The layout of link's identity directory (link.Enroll writes the same files,
	// each synced; identity.json, written last, marks a complete one).
	files := map[string]string{
		"device.key":    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"device.crt":    res.Certificate,
		"device-ca.crt": res.DeviceCA,
		"server-ca.crt": res.ServerCA,
	}
	for i, k := range res.Trust.ReleaseKeys {
		files[filepath.Join("trust", fmt.Sprintf("release-%d.pub", i))] = k
	}
	if res.Trust.DirectorKey != "" {
		files[filepath.Join("trust", "director.pub")] = res.Trust.DirectorKey
	}
	if err := os.MkdirAll(filepath.Join(dir, "trust"), 0o700); err != nil {
		return "", err
	}
	for name, data := range files {
		mode := os.FileMode(0o644)
		if name == "device.key" {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), mode); err != nil {
			return "", err
		}
	}
	idJSON, _ := json.MarshalIndent(link.Identity{DeviceID: res.DeviceID, ServerURL: serverURL, MQTTURL: res.MQTTURL}, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "identity.json"), idJSON, 0o644); err != nil {
		return "", err
	}
	return res.DeviceID, nil
}

func enrollPost(ctx context.Context, client *http.Client, endpoint string, body []byte, out *link.EnrollResponse) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK && res.StatusCode != http.StatusAccepted {
		var p struct{ Title, Detail string }
		json.Unmarshal(data, &p)
		if res.StatusCode >= 500 { // the server's trouble: worth asking again
			return fmt.Errorf("enrollment: %s: %s (HTTP %d)", p.Title, p.Detail, res.StatusCode)
		}
		return fmt.Errorf("%w: %s: %s (HTTP %d)", link.ErrEnrollRefused, p.Title, p.Detail, res.StatusCode)
	}
	return json.Unmarshal(data, out)
}
