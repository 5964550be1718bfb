// Package cgroup names the workload of a socket from its cgroup v2: it
// maps the cgroup ids the kernel program records to cgroup paths, and
// reads in a path the container and Kubernetes pod it belongs to.
// Everything is pure Go; the path rules are testable without root.
package cgroup

import (
	"regexp"
	"strings"
)

// Workload is what a cgroup path says about its processes.
type Workload struct {
	// ContainerID is the 64-hex container id of containerd/CRI, CRI-O,
	// Docker or Podman, "" if the path names no container.
	ContainerID string
	// PodUID is the Kubernetes pod UID (with dashes, as the API server
	// writes it), "" if the path is not under a kubepods cgroup.
	PodUID string
}

var (
	// Container cgroups named <runtime>-<id>: scopes of the systemd cgroup
	// driver (cri-containerd-<id>.scope, crio-<id>.scope,
	// docker-<id>.scope, libpod-<id>.scope, nerdctl-<id>.scope) and the
	// same names without ".scope" under the cgroupfs drivers of CRI-O
	// (…/pod<uid>/crio-<id>) and Podman (/libpod_parent/libpod-<id>).
	// crio-conmon-<id> and libpod-conmon-<id> hold the runtime's monitor
	// process, not the container, and do not match.
	scopeRE = regexp.MustCompile(`^(?:cri-containerd|crio|docker|libpod|nerdctl)-([0-9a-f]{64})(?:\.scope)?$`)
	// The cgroupfs drivers name the container's cgroup by its id alone:
	// /docker/<id>, /kubepods/burstable/pod<uid>/<id>.
	bareIDRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

	// A pod UID is a UUID, or for static pods the 32-hex hash of the
	// manifest that the kubelet uses as their UID.
	uidRE = `[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}`
	// systemd driver: kubepods-pod<uid>.slice (Guaranteed) and
	// kubepods-{burstable,besteffort}-pod<uid>.slice, the UID's dashes
	// written as underscores (a dash separates slice levels in systemd).
	// With a --cgroup-root such as kind's /kubelet.slice the names carry
	// the parent slices' prefix: kubelet-kubepods-burstable-pod<uid>.slice.
	podSliceRE = regexp.MustCompile(`^(?:[a-z0-9_.@]+-)*kubepods(?:-besteffort|-burstable)?-pod(` + uidRE + `)\.slice$`)
	// The kubepods slice itself: kubepods.slice, or with a cgroup root
	// slice in front, kubelet-kubepods.slice.
	kubepodsSliceRE = regexp.MustCompile(`^(?:[a-z0-9_.@]+-)*kubepods\.slice$`)
	// cgroupfs driver: pod<uid> under /kubepods[/burstable|/besteffort].
	podDirRE = regexp.MustCompile(`^pod(` + uidRE + `)$`)
)

// Parse returns the workload that the cgroup path p (as in
// /proc/<pid>/cgroup, "/kubepods.slice/…") names. The deepest container
// segment wins, so a container's own sub-cgroups (systemd in a container,
// CRI-O's nested "container" cgroup) keep the container's id.
func Parse(p string) Workload {
	var w Workload
	segs := strings.Split(strings.Trim(p, "/"), "/")
	kubepods := false
	for _, s := range segs {
		switch {
		case s == "kubepods" || kubepodsSliceRE.MatchString(s):
			kubepods = true
		case kubepods && w.PodUID == "":
			if m := podSliceRE.FindStringSubmatch(s); m != nil {
				w.PodUID = strings.ReplaceAll(m[1], "_", "-")
			} else if m := podDirRE.FindStringSubmatch(s); m != nil && !strings.Contains(m[1], "_") {
				w.PodUID = m[1]
			}
		}
		if m := scopeRE.FindStringSubmatch(s); m != nil {
			w.ContainerID = m[1]
		} else if bareIDRE.MatchString(s) {
			w.ContainerID = s
		}
	}
	return w
}
