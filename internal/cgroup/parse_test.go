package cgroup

import (
	"strings"
	"testing"
)

const (
	cid  = "3f1c2b7e9a8d4c6b5e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f"
	uid  = "5d2f7a3c-8c4b-4a8e-9c51-0f2b7c9d1e23"
	uidU = "5d2f7a3c_8c4b_4a8e_9c51_0f2b7c9d1e23" // as the systemd driver writes it
	// The kubelet uses the hash of a static pod's manifest as its UID.
	staticUID = "8b1a9953c4611296a827abf8c47804d7"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		want       Workload
	}{
		{"kubelet systemd driver, containerd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			Workload{ContainerID: cid, PodUID: uid}},
		{"kubelet systemd driver, CRI-O", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + cid + ".scope",
			Workload{ContainerID: cid, PodUID: uid}},
		{"CRI-O nested container cgroup", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + cid + ".scope/container",
			Workload{ContainerID: cid, PodUID: uid}},
		{"Guaranteed pod, systemd driver", "/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			Workload{ContainerID: cid, PodUID: uid}},
		{"pod sandbox slice itself", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice",
			Workload{PodUID: uid}},
		{"CRI-O conmon is not the container", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-conmon-" + cid + ".scope",
			Workload{PodUID: uid}},
		{"kubelet cgroupfs driver", "/kubepods/burstable/pod" + uid + "/" + cid,
			Workload{ContainerID: cid, PodUID: uid}},
		{"cgroupfs driver, Guaranteed", "/kubepods/pod" + uid + "/" + cid,
			Workload{ContainerID: cid, PodUID: uid}},
		{"static pod", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + staticUID + ".slice/cri-containerd-" + cid + ".scope",
			Workload{ContainerID: cid, PodUID: staticUID}},
		{"Docker, systemd driver", "/system.slice/docker-" + cid + ".scope", Workload{ContainerID: cid}},
		{"Docker, cgroupfs driver", "/docker/" + cid, Workload{ContainerID: cid}},
		{"Podman", "/machine.slice/libpod-" + cid + ".scope", Workload{ContainerID: cid}},
		{"Podman rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + cid + ".scope/container", Workload{ContainerID: cid}},
		{"Podman conmon", "/machine.slice/libpod-conmon-" + cid + ".scope", Workload{}},
		{"kind node: kubelet.slice cgroup root, systemd driver", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			Workload{ContainerID: cid, PodUID: uid}},
		{"kind node seen from the host: inside the node container's scope", "/system.slice/docker-" + strings.Repeat("a", 64) + ".scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			Workload{ContainerID: cid, PodUID: uid}},
		{"kubelet.slice pod slice itself", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod" + uidU + ".slice",
			Workload{PodUID: uid}},
		{"CRI-O, cgroupfs driver", "/kubepods/burstable/pod" + uid + "/crio-" + cid,
			Workload{ContainerID: cid, PodUID: uid}},
		{"CRI-O conmon, cgroupfs driver", "/kubepods/burstable/pod" + uid + "/crio-conmon-" + cid,
			Workload{PodUID: uid}},
		{"nerdctl", "/system.slice/nerdctl-" + cid + ".scope", Workload{ContainerID: cid}},
		{"Podman, cgroupfs manager", "/libpod_parent/libpod-" + cid, Workload{ContainerID: cid}},
		{"Podman, cgroupfs manager, nested container cgroup", "/libpod_parent/libpod-" + cid + "/container", Workload{ContainerID: cid}},
		{"kubepods-like slice outside a pod level", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice", Workload{}},
		{"systemd service", "/system.slice/ssh.service", Workload{}},
		{"root", "/", Workload{}},
		{"empty", "", Workload{}},
		{"pod-like name outside kubepods", "/system.slice/pod" + uid, Workload{}},
		{"underscores belong to the systemd driver only", "/kubepods/burstable/pod" + uidU + "/" + cid, Workload{ContainerID: cid}},
		{"63 hex is no id", "/docker/" + cid[1:], Workload{}},
		{"upper-case hex is no id", "/system.slice/docker-3F1C2B7E9A8D4C6B5E0F1A2B3C4D5E6F708192A3B4C5D6E7F8091A2B3C4D5E6F.scope", Workload{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Parse(tc.path); got != tc.want {
				t.Errorf("Parse(%q) = %+v, want %+v", tc.path, got, tc.want)
			}
		})
	}
}
