package agent

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/trust"
)

// fakeServer serves packages in parts as the management server does, counts blob
// downloads, and can cut the first download of a blob half way.
type fakeServer struct {
	mu        sync.Mutex
	manifests map[string][2][]byte // digest -> manifest.json, manifest.sig
	blobs     map[string][]byte
	fetched   map[string]int
	cutOnce   map[string]bool
	ranges    int
	open      atomic.Int64 // connections the device holds open to the server
}

func newFakeServer() *fakeServer {
	return &fakeServer{manifests: map[string][2][]byte{}, blobs: map[string][]byte{}, fetched: map[string]int{}, cutOnce: map[string]bool{}}
}

// add splits a package into its parts and returns its manifest digest.
func (f *fakeServer) add(t *testing.T, pkg []byte) string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(pkg))
	var manifest, sig []byte
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		switch {
		case hdr.Name == app.EntryManifest:
			manifest = data
		case hdr.Name == app.EntrySig:
			sig = data
		case strings.HasPrefix(hdr.Name, app.BlobPrefix):
			f.blobs["sha256:"+strings.TrimPrefix(hdr.Name, app.BlobPrefix)] = data
		}
	}
	sum := sha256.Sum256(manifest)
	d := "sha256:" + hex.EncodeToString(sum[:])
	f.manifests[d] = [2][]byte{manifest, sig}
	return d
}

func (f *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	path := strings.TrimPrefix(r.URL.Path, "/api/v1/device/")
	switch {
	case strings.HasPrefix(path, "manifests/"):
		d, sig := strings.CutSuffix(strings.TrimPrefix(path, "manifests/"), "/sig")
		m, ok := f.manifests[d]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if sig {
			w.Write(m[1])
		} else {
			w.Write(m[0])
		}
	case strings.HasPrefix(path, "blobs/"):
		d := strings.TrimPrefix(path, "blobs/")
		b, ok := f.blobs[d]
		if !ok {
			http.NotFound(w, r)
			return
		}
		f.fetched[d]++
		if r.Header.Get("Range") != "" {
			f.ranges++
		}
		if f.cutOnce[d] {
			delete(f.cutOnce, d)
			// Half the blob, then the connection dies.
			w.Header().Set("Content-Length", itoa(len(b)))
			w.WriteHeader(http.StatusOK)
			w.Write(b[:len(b)/2])
			panic(http.ErrAbortHandler)
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	default:
		http.NotFound(w, r)
	}
}

type managedRig struct {
	e        *testEnv
	srv      *fakeServer
	director trust.PrivateKey
	version  uint64
	mgmt     Management // what the agent was given, to give it again after a restart
}

func newManagedRig(t *testing.T) *managedRig {
	e := newEnv(t)
	srv := newFakeServer()
	ts := httptest.NewUnstartedServer(srv)
	ts.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			srv.open.Add(1)
		case http.StateClosed, http.StateHijacked:
			srv.open.Add(-1)
		}
	}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	director, _ := trust.GenerateKey()
	m := Management{DeviceID: "dev-1", ServerURL: ts.URL, Director: director.Public(),
		TLS: &tls.Config{RootCAs: ts.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}}
	e.agent.Manage(m)
	return &managedRig{e: e, srv: srv, director: director, mgmt: m}
}

// offer signs and hands the device a desired state with these apps.
func (r *managedRig) offer(t *testing.T, apps ...link.DesiredPackage) {
	t.Helper()
	r.version++
	env, err := link.SignDesired(&link.Desired{Device: "dev-1", Version: r.version, Expires: time.Now().Add(time.Hour), Apps: apps, Campaign: "c1"}, r.director)
	if err != nil {
		t.Fatal(err)
	}
	r.e.agent.OfferDesired(env)
}

// outcome waits for the device's report on desired version v.
func (r *managedRig) outcome(t *testing.T, v uint64) Event {
	t.Helper()
	var out Event
	waitFor(t, "the outcome of the desired state", 60*time.Second, func() bool {
		evs, _ := r.e.agent.Events(0)
		for _, ev := range evs {
			if ev.Kind == link.EventDesired && ev.DesiredVersion == v && ev.State != link.DesiredAccepted && ev.State != link.DesiredApplying {
				out = ev
				return true
			}
		}
		return false
	})
	return out
}

func TestReconcileInstallsUpdatesAndRollsBackToDesired(t *testing.T) {
	r := newManagedRig(t)
	root := helloRoot(t)
	v1 := r.srv.add(t, helloV(t, r.e, root, "1.0.0", "one", ""))
	v2 := r.srv.add(t, helloV(t, r.e, root, "1.1.0", "two", ""))
	for d := range r.srv.blobs {
		r.srv.cutOnce[d] = true // every first download is cut half way
	}

	r.offer(t, link.DesiredPackage{Name: "hello", Version: "1.0.0", Manifest: v1})
	if ev := r.outcome(t, 1); ev.State != link.DesiredApplied || ev.Campaign != "c1" {
		t.Fatalf("outcome %+v", ev)
	}
	if got := r.e.answer(t); got != "one from hello 1.0.0\n" {
		t.Fatalf("answered %q", got)
	}
	if r.srv.ranges == 0 {
		t.Fatal("cut downloads were not resumed with a range request")
	}
	// Done with the server: no connection left idle (a server's descriptor each).
	waitFor(t, "the device to close its connections to the server", 10*time.Second, func() bool { return r.srv.open.Load() == 0 })
	fetchedV1 := len(r.srv.fetched)

	// The update shares the layer (and config): nothing new to download.
	r.offer(t, link.DesiredPackage{Name: "hello", Version: "1.1.0", Manifest: v2})
	if ev := r.outcome(t, 2); ev.State != link.DesiredApplied {
		t.Fatalf("outcome %+v", ev)
	}
	if st := r.e.status("hello"); st.Version != "1.1.0" || st.Previous != "1.0.0" {
		t.Fatalf("after update: %+v", st)
	}
	if len(r.srv.fetched) != fetchedV1 {
		t.Fatalf("the update downloaded blobs the device had: %v", r.srv.fetched)
	}

	// Back to the previous release: a rollback to N-1, no download.
	before := len(r.srv.fetched)
	r.offer(t, link.DesiredPackage{Name: "hello", Version: "1.0.0", Manifest: v1})
	if ev := r.outcome(t, 3); ev.State != link.DesiredApplied {
		t.Fatalf("outcome %+v", ev)
	}
	if st := r.e.status("hello"); st.Version != "1.0.0" || len(r.srv.fetched) != before {
		t.Fatalf("after rollback: %+v, fetched %v", st, r.srv.fetched)
	}
}

func TestReconcileRefusesForgedStaleAndExpiredDocuments(t *testing.T) {
	r := newManagedRig(t)
	v1 := r.srv.add(t, helloV(t, r.e, helloRoot(t), "1.0.0", "one", ""))
	pkgs := []link.DesiredPackage{{Name: "hello", Version: "1.0.0", Manifest: v1}}
	r.offer(t, pkgs...)
	r.outcome(t, 1)

	forger, _ := trust.GenerateKey()
	sign := func(d *link.Desired, k trust.PrivateKey) []byte {
		b, err := link.SignDesired(d, k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	count := func() int {
		evs, _ := r.e.agent.Events(0)
		n := 0
		for _, ev := range evs {
			if ev.State == link.DesiredRejected {
				n++
			}
		}
		return n
	}
	cases := []struct {
		name string
		doc  []byte
		want string
	}{
		{"forged", sign(&link.Desired{Device: "dev-1", Version: 9, Expires: time.Now().Add(time.Hour), Apps: pkgs}, forger), "signature"},
		{"expired", sign(&link.Desired{Device: "dev-1", Version: 9, Expires: time.Now().Add(-time.Minute), Apps: pkgs}, r.director), "expired"},
		{"another device", sign(&link.Desired{Device: "dev-2", Version: 9, Expires: time.Now().Add(time.Hour), Apps: pkgs}, r.director), "another device"},
		{"garbage", []byte("{not json"), "malformed"},
	}
	for _, tc := range cases {
		n := count()
		r.e.agent.OfferDesired(tc.doc)
		waitFor(t, tc.name+" rejected", 10*time.Second, func() bool { return count() > n })
		evs, _ := r.e.agent.Events(0)
		if last := evs[len(evs)-1]; !strings.Contains(last.Message, tc.want) {
			t.Fatalf("%s: %+v", tc.name, last)
		}
	}
	// A replay of the accepted document changes nothing and reports nothing.
	n := count()
	r.e.agent.OfferDesired(sign(&link.Desired{Device: "dev-1", Version: 1, Expires: time.Now().Add(time.Hour), Apps: pkgs}, r.director))
	time.Sleep(300 * time.Millisecond)
	if count() != n {
		t.Fatal("a replayed document was reported as rejected instead of ignored")
	}
	if st := r.e.status("hello"); st.Version != "1.0.0" || st.State != StateRunning {
		t.Fatalf("app disturbed: %+v", st)
	}
}

// TestReconcileOSUpdateReportsItsOutcomeAfterTheReboot: an OS in the desired state
// is written, tried once across a reboot, and reported applied (or rolled back)
// only once the device knows, when the retained document arrives again.
func TestReconcileOSUpdateReportsItsOutcomeAfterTheReboot(t *testing.T) {
	for _, broken := range []bool{false, true} {
		t.Run(map[bool]string{false: "commits", true: "rolls back"}[broken], func(t *testing.T) {
			r := newOSRig(t)
			srv := newFakeServer()
			ts := httptest.NewTLSServer(srv)
			t.Cleanup(ts.Close)
			director, _ := trust.GenerateKey()
			manage := func() {
				r.e.agent.Manage(Management{DeviceID: "dev-1", ServerURL: ts.URL, Director: director.Public(),
					TLS: &tls.Config{RootCAs: ts.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}})
			}
			manage()
			digest := srv.add(t, r.osPkg(t, r.e.key, "2.0.0", randomImage(t, 1<<20)))
			doc, err := link.SignDesired(&link.Desired{Device: "dev-1", Version: 1, Expires: time.Now().Add(time.Hour),
				OS: &link.DesiredPackage{Name: "os", Version: "2.0.0", Manifest: digest}}, director)
			if err != nil {
				t.Fatal(err)
			}
			r.e.agent.OfferDesired(doc)
			waitFor(t, "a reboot request", 30*time.Second, func() bool { _, err := os.Stat(r.marker); return err == nil })
			if broken {
				os.WriteFile(filepath.Join(r.e.cfg.DataDir, "volumes", "sensor", "data", "broken"), nil, 0o644)
			}
			os.Remove(r.marker)
			r.powerCycle(t)
			manage()
			r.e.agent.OfferDesired(doc) // the broker redelivers the retained document
			if broken {
				waitFor(t, "a reboot request", 30*time.Second, func() bool { _, err := os.Stat(r.marker); return err == nil })
				os.Remove(filepath.Join(r.e.cfg.DataDir, "volumes", "sensor", "data", "broken"))
				os.Remove(r.marker)
				r.powerCycle(t)
				manage()
				r.settled(t)
				r.e.agent.OfferDesired(doc)
			}
			rig := &managedRig{e: r.e}
			ev := rig.outcome(t, 1)
			want := map[bool]string{false: link.DesiredApplied, true: link.DesiredRolledBack}[broken]
			if ev.State != want {
				t.Fatalf("reported %+v, want %s", ev, want)
			}
			if st := r.settled(t); (st.Version == "2.0.0") == broken {
				t.Fatalf("OS status %+v", st)
			}
		})
	}
}

// TestRenewedDocumentIsNotCarriedOutAgain: the server renews a document (same
// target - the same Since - new version and expiry) or re-issues it to carry the
// account's policy.
// An update that rolled back is not retried by that, and nothing is reported
// for the new version: its outcome is the one already reported.
func TestRenewedDocumentIsNotCarriedOutAgain(t *testing.T) {
	r := newManagedRig(t)
	root := helloRoot(t)
	v1 := r.srv.add(t, helloV(t, r.e, root, "1.0.0", "one", ""))
	bad := r.srv.add(t, pkg(t, r.e.key, root, "name: hello\nversion: 2.0.0\nprobation: 1s\nstop_timeout: 1s\ncommand: [\"/no/such/program\"]\n"))
	r.offer(t, link.DesiredPackage{Name: "hello", Version: "1.0.0", Manifest: v1})
	if ev := r.outcome(t, 1); ev.State != link.DesiredApplied {
		t.Fatalf("outcome %+v", ev)
	}
	r.version++
	env, err := link.SignDesired(&link.Desired{Device: "dev-1", Version: 2, Since: 2, Expires: time.Now().Add(time.Hour), Campaign: "c1",
		Apps: []link.DesiredPackage{{Name: "hello", Version: "2.0.0", Manifest: bad}}}, r.director)
	if err != nil {
		t.Fatal(err)
	}
	r.e.agent.OfferDesired(env)
	if ev := r.outcome(t, 2); ev.State != link.DesiredRolledBack {
		t.Fatalf("outcome %+v", ev)
	}
	fetched := len(r.srv.fetched)
	evs, _ := r.e.agent.Events(0)
	before := len(evs)

	// Version 3: the target of version 2, renewed; then version 4 carries the
	// policy. Both say the target was set at version 2.
	renew := func(devmode string) {
		t.Helper()
		r.version++
		env, err := link.SignDesired(&link.Desired{Device: "dev-1", Version: r.version, Since: 2, Expires: time.Now().Add(time.Hour), Campaign: "c1",
			Apps: []link.DesiredPackage{{Name: "hello", Version: "2.0.0", Manifest: bad}}, DevMode: devmode}, r.director)
		if err != nil {
			t.Fatal(err)
		}
		r.e.agent.OfferDesired(env)
		waitFor(t, "the renewal accepted", 10*time.Second, func() bool { v, done := r.e.agent.DesiredVersion(); return v == r.version && done })
	}
	renew("")
	renew(link.DevModeDeny)
	if st, _ := r.e.agent.DevStatus(); !st.Denied {
		t.Fatalf("the policy of version 4 was not applied: %+v", st)
	}
	evs, _ = r.e.agent.Events(0)
	for _, ev := range evs[before:] {
		if ev.Kind == link.EventDesired || ev.Kind == "update" || ev.Kind == "install" {
			t.Errorf("after a renewal: %+v", ev)
		}
	}
	if st := r.e.status("hello"); st.Version != "1.0.0" {
		t.Fatalf("hello %+v", st)
	}
	if len(r.srv.fetched) != fetched {
		t.Fatalf("a renewal downloaded again: %v", r.srv.fetched)
	}
	// The same packages as a new target (Since = its version): carried out.
	r.version++
	env, _ = link.SignDesired(&link.Desired{Device: "dev-1", Version: r.version, Since: r.version, Expires: time.Now().Add(time.Hour), Campaign: "c2",
		Apps: []link.DesiredPackage{{Name: "hello", Version: "2.0.0", Manifest: bad}}}, r.director)
	r.e.agent.OfferDesired(env)
	if ev := r.outcome(t, r.version); ev.State != link.DesiredRolledBack {
		t.Fatalf("a new target with the same packages: %+v", ev)
	}
}
