// Command image assembles the otelcol-tcprtt OCI image from collector
// binaries already cross-built for each platform (`make image` builds them),
// without Docker, a daemon or a registry: go-containerregistry writes an OCI
// image layout (one multi-platform index), and this program packs that layout
// into a tarball that `podman load`, `skopeo copy oci-archive:` and, once
// unpacked, `crane push --index` take.
//
// Reproducible: every timestamp (file mtimes, config "created", history) is
// SOURCE_DATE_EPOCH, owners are 0:0, entries are sorted, so the same binaries
// and CA bundle give the same digests.
//
// Each platform's image has two layers:
//  1. the base: the host's CA bundle at /etc/ssl/certs/ca-certificates.crt
//     (Go's crypto/x509 reads it there), /tmp (1777), and /etc/passwd and
//     /etc/group naming root (0) and nonroot (65532), as distroless does;
//  2. the collector at /otelcol-tcprtt (0755: runs as any uid).
//
// No shell, no libc: the collector is a static (CGO_ENABLED=0) Go binary.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// platformFlag collects -binary linux/ARCH=PATH pairs, in the order given.
type platformFlag []platformBinary

type platformBinary struct {
	os, arch, path string
}

func (p *platformFlag) String() string { return fmt.Sprint(*p) }

func (p *platformFlag) Set(v string) error {
	plat, path, ok := strings.Cut(v, "=")
	goos, arch, ok2 := strings.Cut(plat, "/")
	if !ok || !ok2 || path == "" {
		return fmt.Errorf("want OS/ARCH=PATH, e.g. linux/arm64=build/image/linux-arm64/otelcol-tcprtt, got %q", v)
	}
	*p = append(*p, platformBinary{goos, arch, path})
	return nil
}

func main() {
	var bins platformFlag
	flag.Var(&bins, "binary", "OS/ARCH=PATH of the collector built for that platform (repeat per platform)")
	caBundle := flag.String("ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA certificates (PEM) to ship at /etc/ssl/certs/ca-certificates.crt")
	outDir := flag.String("layout", "build/image/oci", "OCI image layout directory to write (replaced)")
	outTar := flag.String("tarball", "build/otelcol-tcprtt.oci.tar", "tarball of the layout to write (oci-archive)")
	tag := flag.String("tag", "0.0.0-dev", "version: the image's org.opencontainers.image.version label; the layout names the index otelcol-tcprtt:TAG (org.opencontainers.image.ref.name)")
	source := flag.String("source", "https://github.com/tcprtt/tcprtt", "org.opencontainers.image.source label")
	flag.Parse()
	if len(bins) == 0 {
		fail("no -binary given: pass -binary linux/amd64=PATH (and one per further platform)")
	}
	epoch, err := sourceDateEpoch()
	if err != nil {
		fail(err.Error())
	}
	digest, err := build(bins, *caBundle, *outDir, *outTar, *tag, *source, epoch)
	if err != nil {
		fail(err.Error())
	}
	fmt.Printf("%s %s (layout %s, tag %s)\n", *outTar, digest, *outDir, *tag)
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "image: "+msg)
	os.Exit(1)
}

// sourceDateEpoch is SOURCE_DATE_EPOCH (reproducible-builds.org), 0 if unset.
func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a number of seconds: %v", s, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

func build(bins []platformBinary, caBundle, outDir, outTar, tag, source string, epoch time.Time) (v1.Hash, error) {
	ca, err := os.ReadFile(caBundle)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("read the CA bundle (install ca-certificates or pass -ca-bundle): %w", err)
	}
	base, err := layer(epoch, []entry{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "etc/ssl/", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: ca},
		{name: "tmp/", mode: 0o1777, dir: true},
	})
	if err != nil {
		return v1.Hash{}, err
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, b := range bins {
		bin, err := os.ReadFile(b.path)
		if err != nil {
			return v1.Hash{}, fmt.Errorf("read the %s/%s collector (make image builds it): %w", b.os, b.arch, err)
		}
		app, err := layer(epoch, []entry{{name: "otelcol-tcprtt", mode: 0o755, data: bin}})
		if err != nil {
			return v1.Hash{}, err
		}
		img, err := platformImage(base, app, b, tag, source, epoch)
		if err != nil {
			return v1.Hash{}, fmt.Errorf("%s/%s image: %w", b.os, b.arch, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: b.os, Architecture: b.arch}},
		})
	}
	if err := os.RemoveAll(outDir); err != nil {
		return v1.Hash{}, err
	}
	p, err := layout.Write(outDir, empty.Index)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("write the layout %s: %w", outDir, err)
	}
	// The ref name is what `podman load` names the image after
	// (localhost/otelcol-tcprtt:TAG) and what oci-archive:FILE:REF selects.
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": "otelcol-tcprtt:" + tag,
	})); err != nil {
		return v1.Hash{}, fmt.Errorf("write the index into %s: %w", outDir, err)
	}
	if err := tarDir(outDir, outTar, epoch); err != nil {
		return v1.Hash{}, fmt.Errorf("pack %s into %s: %w", outDir, outTar, err)
	}
	return idx.Digest()
}

func platformImage(base, app v1.Layer, b platformBinary, tag, source string, epoch time.Time) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.Append(img,
		mutate.Addendum{Layer: base, MediaType: types.OCILayer, History: v1.History{
			Created: v1.Time{Time: epoch}, CreatedBy: "tools/image: CA bundle, /tmp, passwd (root, nonroot 65532)"}},
		mutate.Addendum{Layer: app, MediaType: types.OCILayer, History: v1.History{
			Created: v1.Time{Time: epoch}, CreatedBy: "tools/image: /otelcol-tcprtt (make image)"}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = b.os, b.arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config = v1.Config{
		Entrypoint: []string{"/otelcol-tcprtt"},
		Cmd:        []string{"--config=/etc/otelcol-tcprtt/config.yaml"},
		// uid 0 as the DaemonSet runs it (capabilities are lost at exec
		// for any other uid); every file works for another uid too.
		User:       "0:0",
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":   "otelcol-tcprtt",
			"org.opencontainers.image.version": tag,
			"org.opencontainers.image.source":  source,
		},
	}
	return mutate.ConfigFile(img, cf)
}

type entry struct {
	name string
	mode int64
	dir  bool
	data []byte
}

// layer is an uncompressed tar of entries (sorted, 0:0, mtime epoch),
// gzipped by go-containerregistry (deterministic for a given Go release).
func layer(epoch time.Time, entries []entry) (v1.Layer, error) {
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: epoch, Uname: "root", Gname: "root", Format: tar.FormatPAX}
		if e.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// tarDir packs the layout directory as an oci-archive: paths relative to
// dir, sorted, regular files and directories only, 0:0, mtime epoch.
func tarDir(dir, out string, epoch time.Time) error {
	var paths []string
	err := filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err == nil && path != dir {
			paths = append(paths, path)
		}
		return err
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	f, err := os.Create(out + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, path := range paths {
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case fi.IsDir():
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
		case fi.Mode().IsRegular():
			h.Typeflag, h.Mode, h.Size = tar.TypeReg, 0o644, fi.Size()
		default:
			return fmt.Errorf("%s: not a file or directory", path)
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if _, err := tw.Write(data); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(out+".tmp", out)
}
