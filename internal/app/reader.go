package app

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/tern-iot/tern/internal/trust"
)

// ReadOptions says whom a package must be signed by.
type ReadOptions struct {
	Keys      []trust.PublicKey // trusted release keys
	Threshold int               // distinct trusted signatures required; 0 means 1
	// SkipSignatures reads a package without deciding whom to trust, for inspect.
	// The structure and every digest are still checked.
	SkipSignatures bool
	// Admit, if set, is asked once the signed manifest is verified and before any
	// blob is read: a device refuses a package its policy forbids (a held device,
	// another platform) before it stores a byte of it.
	Admit func(*PackageManifest) error
}

// BlobSink receives a package's blobs, in package order, once the manifest is verified.
//
// WriteBlob must read r to io.EOF before it keeps anything: r reports a digest or size
// mismatch as an error in place of io.EOF, so a blob that does not match its signed
// descriptor is never kept. A sink that returns early (it already holds the blob) is
// fine: the reader drains and checks the rest itself.
type BlobSink interface {
	WriteBlob(d Descriptor, r io.Reader) error
}

// Discard is a BlobSink that keeps nothing: the reader still hashes every byte.
var Discard BlobSink = discard{}

type discard struct{}

func (discard) WriteBlob(_ Descriptor, r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

// Package is what a reader learned from a valid package.
type Package struct {
	Manifest     *PackageManifest
	ManifestJSON []byte
	Envelope     *trust.Envelope
	SignedBy     []string // trusted key ids whose signatures verify (none with SkipSignatures)
}

// Read reads a package in one pass: the format line, then manifest.json, then
// manifest.sig, whose signatures are verified before any blob is read; then each blob,
// handed to sink while it is hashed. Any deviation (unknown, duplicate or out-of-order
// entry, truncation, oversized entry, digest or size mismatch, bad signature) is
// refused with its own error kind.
func Read(r io.Reader, opts ReadOptions, sink BlobSink) (*Package, error) {
	cr := &countReader{r: r}
	tr := tar.NewReader(cr)
	p := &Package{}

	format, err := readSmallEntry(tr, EntryFormat, len(FormatLine)+64, nil)
	if err != nil {
		if errors.Is(err, ErrTruncated) || errors.Is(err, ErrEntryOrder) || errors.Is(err, ErrUnknownEntry) {
			return nil, fmt.Errorf("%w: %w", ErrNotPackage, err)
		}
		return nil, err
	}
	if string(format) != FormatLine {
		return nil, fmt.Errorf("%w: %s says %q, this tern reads %q", ErrUnsupportedFormat, EntryFormat, strings.TrimSpace(string(format)), strings.TrimSpace(FormatLine))
	}
	seen := map[string]bool{EntryFormat: true}
	if p.ManifestJSON, err = readSmallEntry(tr, EntryManifest, MaxManifestSize, seen); err != nil {
		return nil, err
	}
	if p.Manifest, err = parsePackageManifest(p.ManifestJSON); err != nil {
		return nil, err
	}
	sig, err := readSmallEntry(tr, EntrySig, MaxSigSize, seen)
	if err != nil {
		return nil, err
	}
	if p.Envelope, err = trust.ParseEnvelope(sig); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrSignature, EntrySig, err)
	}
	// Signatures cover the payload, not the envelope's JSON: only the form tern writes
	// is accepted, so a package's bytes cannot change while its signatures still hold.
	if canon, err := p.Envelope.Marshal(); err != nil || !bytes.Equal(canon, sig) {
		return nil, fmt.Errorf("%w: %s is not in canonical form", ErrSignature, EntrySig)
	}
	if !bytes.Equal(p.Envelope.Payload, p.ManifestJSON) {
		return nil, fmt.Errorf("%w: %s does not sign this %s", ErrSignature, EntrySig, EntryManifest)
	}
	if !opts.SkipSignatures {
		v, err := p.Envelope.Verify(PayloadType, opts.Keys, opts.Threshold)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrSignature, err)
		}
		p.SignedBy = v.KeyIDs
	} else if len(p.Envelope.Signatures) == 0 || p.Envelope.PayloadType != PayloadType {
		return nil, fmt.Errorf("%w: unsigned, or not a signed app manifest (payload type %q)", ErrSignature, p.Envelope.PayloadType)
	}

	if opts.Admit != nil {
		if err := opts.Admit(p.Manifest); err != nil {
			return nil, err
		}
	}
	blobs := p.Manifest.Blobs()
	inManifest := map[string]bool{}
	for _, d := range blobs {
		inManifest[BlobPrefix+d.Hex()] = true
	}
	for _, d := range blobs {
		name := BlobPrefix + d.Hex()
		hdr, err := nextEntry(tr, name, seen, inManifest)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: %w: %s", ErrTruncated, ErrMissingBlob, d.Digest)
			}
			return nil, err
		}
		if hdr.Size != d.Size {
			return nil, fmt.Errorf("%w: blob %s is %d bytes, manifest says %d", ErrBlobSize, d.Digest, hdr.Size, d.Size)
		}
		vr := &verifyingReader{r: tr, want: d, h: sha256.New()}
		if err := sink.WriteBlob(d, vr); err != nil {
			return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
		}
		if _, err := io.Copy(io.Discard, vr); err != nil {
			return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
		}
	}
	end := cr.n
	if hdr, err := tr.Next(); err == nil {
		if seen[hdr.Name] {
			return nil, fmt.Errorf("%w: %q after the last blob", ErrDuplicateEntry, hdr.Name)
		}
		return nil, fmt.Errorf("%w: %q after the last blob", ErrUnknownEntry, hdr.Name)
	} else if !errors.Is(err, io.EOF) {
		return nil, tarError(err)
	}
	// archive/tar also says io.EOF when the stream stops inside the last blob's padding
	// or its end-of-archive blocks; a whole package ends with two zero blocks.
	if cr.n-end < 2*512 {
		return nil, fmt.Errorf("%w: no end-of-archive marker after the last blob", ErrTruncated)
	}
	return p, nil
}

// countReader counts the bytes read through it. It has no Seek method, so archive/tar
// reads, rather than skips, padding and end-of-archive blocks, and they are counted.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// nextEntry reads the next header and checks it is the regular file want.
func nextEntry(tr *tar.Reader, want string, seen, known map[string]bool) (*tar.Header, error) {
	hdr, err := tr.Next()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, err
		}
		return nil, tarError(err)
	}
	switch {
	case hdr.Name == want:
	case seen[hdr.Name]:
		return nil, fmt.Errorf("%w: %q", ErrDuplicateEntry, hdr.Name)
	case hdr.Name == EntryFormat || hdr.Name == EntryManifest || hdr.Name == EntrySig || known[hdr.Name]:
		return nil, fmt.Errorf("%w: %q where %q belongs", ErrEntryOrder, hdr.Name, want)
	default:
		return nil, fmt.Errorf("%w: %q where %q belongs", ErrUnknownEntry, hdr.Name, want)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%w: %q is not a regular file (type %q)", ErrUnknownEntry, hdr.Name, hdr.Typeflag)
	}
	if seen != nil {
		seen[hdr.Name] = true
	}
	return hdr, nil
}

// readSmallEntry reads the next entry, which must be want and at most max bytes.
func readSmallEntry(tr *tar.Reader, want string, max int, seen map[string]bool) ([]byte, error) {
	hdr, err := nextEntry(tr, want, seen, nil)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: ends before %s", ErrTruncated, want)
		}
		return nil, err
	}
	if hdr.Size > int64(max) {
		return nil, fmt.Errorf("%w: %s is %d bytes, the limit is %d", ErrTooLarge, want, hdr.Size, max)
	}
	data, err := io.ReadAll(tr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", want, tarError(err))
	}
	return data, nil
}

// tarError maps archive/tar's errors onto ours.
func tarError(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %v", ErrTruncated, err)
	}
	if errors.Is(err, tar.ErrHeader) {
		return fmt.Errorf("%w: %v", ErrNotPackage, err)
	}
	return err
}

// verifyingReader yields a blob's bytes and, in place of io.EOF, an error if they do
// not hash to the descriptor's digest.
type verifyingReader struct {
	r    io.Reader
	want Descriptor
	h    hash.Hash
	n    int64
	done error
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.done != nil {
		return 0, v.done
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if errors.Is(err, io.EOF) {
		v.done = io.EOF
		if v.n != v.want.Size {
			v.done = fmt.Errorf("%w: %d bytes, manifest says %d", ErrBlobSize, v.n, v.want.Size)
		} else if got := "sha256:" + hex.EncodeToString(v.h.Sum(nil)); got != v.want.Digest {
			v.done = fmt.Errorf("%w: content hashes to %s", ErrBlobDigest, got)
		}
		return n, v.done
	}
	if err != nil {
		v.done = tarError(err)
		return n, v.done
	}
	return n, nil
}
