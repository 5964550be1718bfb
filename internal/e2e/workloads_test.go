//go:build linux

package e2e

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// k8sObject is the part of a Kubernetes object these checks read.
type k8sObject struct {
	Kind     string
	Metadata struct {
		Name, Namespace string
	}
	Rules []struct {
		APIGroups []string `yaml:"apiGroups"`
		Resources []string
		Verbs     []string
	}
	Subjects []struct{ Kind, Name, Namespace string }
	RoleRef  struct{ Kind, Name string } `yaml:"roleRef"`
	Data     map[string]string
	Spec     struct {
		Ports []struct {
			Port       int
			TargetPort string `yaml:"targetPort"`
		}
		Template struct {
			Spec struct {
				ServiceAccountName string `yaml:"serviceAccountName"`
				Containers         []struct {
					Name  string
					Ports []struct {
						Name          string
						ContainerPort int `yaml:"containerPort"`
					}
					VolumeMounts []struct {
						Name      string
						MountPath string `yaml:"mountPath"`
						ReadOnly  bool   `yaml:"readOnly"`
					} `yaml:"volumeMounts"`
				}
				Volumes []struct {
					Name     string
					HostPath struct{ Path string } `yaml:"hostPath"`
				}
			}
		}
	}
}

func readObjects(t *testing.T, path string) []k8sObject {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var out []k8sObject
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			require.NoError(t, err, path)
		}
		out = append(out, o)
	}
}

func findObject(t *testing.T, objs []k8sObject, kind string) k8sObject {
	t.Helper()
	for _, o := range objs {
		if o.Kind == kind {
			return o
		}
	}
	t.Fatalf("no %s", kind)
	return k8sObject{}
}

// checkWorkloadsManifests checks deploy/kubernetes/workloads: the DaemonSet
// groups by cgroup and sees the host's cgroup hierarchy; the gateway's
// k8sattributes associates by container.id and k8s.pod.uid only and
// extracts pod name, namespace and workload; its RBAC grants what the
// processor's documentation asks for (read pods, namespaces, replicasets)
// to the gateway's service account; the DaemonSet exports to the gateway.
// None of it ran against a Kubernetes API server.
func checkWorkloadsManifests(t *testing.T, root string) {
	dir := filepath.Join(root, "deploy/kubernetes/workloads")

	var kust struct{ Resources, Patches []any }
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(raw, &kust))
	assert.Contains(t, kust.Resources, "../")
	assert.Contains(t, kust.Resources, "gateway.yaml")
	assert.Len(t, kust.Patches, 2)

	// The agent: group_by cgroup, the host's cgroups mounted read-only.
	cm := findObject(t, readObjects(t, filepath.Join(dir, "configmap.yaml")), "ConfigMap")
	var agent struct {
		Receivers struct {
			Tcprtt struct {
				GroupBy []string `yaml:"group_by"`
			}
		}
	}
	require.NoError(t, yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &agent))
	assert.Contains(t, agent.Receivers.Tcprtt.GroupBy, "cgroup")
	ds := findObject(t, readObjects(t, filepath.Join(dir, "daemonset-cgroup.yaml")), "DaemonSet")
	pod := ds.Spec.Template.Spec
	require.Len(t, pod.Volumes, 1)
	assert.Equal(t, "/sys/fs/cgroup", pod.Volumes[0].HostPath.Path)
	require.Len(t, pod.Containers, 1)
	require.Len(t, pod.Containers[0].VolumeMounts, 1)
	mount := pod.Containers[0].VolumeMounts[0]
	assert.Equal(t, pod.Volumes[0].Name, mount.Name)
	assert.True(t, mount.ReadOnly, "the host's cgroups are mounted read-only")

	// The gateway.
	objs := readObjects(t, filepath.Join(dir, "gateway.yaml"))
	gwCM := findObject(t, objs, "ConfigMap")
	var gw struct {
		Processors struct {
			K8sattributes struct {
				Passthrough bool
				Extract     struct{ Metadata []string }
				Association []struct {
					Sources []struct{ From, Name string }
				} `yaml:"pod_association"`
			}
		}
		Service struct {
			Pipelines map[string]struct{ Processors []string }
		}
	}
	require.NoError(t, yaml.Unmarshal([]byte(gwCM.Data["config.yaml"]), &gw))
	k8s := gw.Processors.K8sattributes
	assert.False(t, k8s.Passthrough)
	var assoc []string
	for _, a := range k8s.Association {
		require.Len(t, a.Sources, 1, "one source per association")
		assert.Equal(t, "resource_attribute", a.Sources[0].From, "associate by the resource's own attributes, never the connection (the DaemonSet's)")
		assoc = append(assoc, a.Sources[0].Name)
	}
	assert.Equal(t, []string{"container.id", "k8s.pod.uid"}, assoc)
	for _, m := range []string{"k8s.pod.name", "k8s.namespace.name", "k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name", "k8s.pod.uid"} {
		assert.Contains(t, k8s.Extract.Metadata, m)
	}
	assert.True(t, slices.ContainsFunc(k8s.Extract.Metadata, func(m string) bool {
		return strings.HasPrefix(m, "container.") || strings.HasPrefix(m, "k8s.container.")
	}), "container.id association needs a container attribute in extract.metadata")
	assert.Equal(t, []string{"k8sattributes", "batch"}, gw.Service.Pipelines["metrics"].Processors)

	role := findObject(t, objs, "ClusterRole")
	grants := map[string]bool{}
	for _, r := range role.Rules {
		assert.ElementsMatch(t, []string{"get", "watch", "list"}, r.Verbs, "read-only")
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				grants[g+"/"+res] = true
			}
		}
	}
	assert.Equal(t, map[string]bool{"/pods": true, "/namespaces": true, "apps/replicasets": true}, grants)
	binding := findObject(t, objs, "ClusterRoleBinding")
	sa := findObject(t, objs, "ServiceAccount")
	assert.Equal(t, role.Metadata.Name, binding.RoleRef.Name)
	require.Len(t, binding.Subjects, 1)
	assert.Equal(t, sa.Metadata.Name, binding.Subjects[0].Name)
	assert.Equal(t, sa.Metadata.Namespace, binding.Subjects[0].Namespace)
	dep := findObject(t, objs, "Deployment")
	assert.Equal(t, sa.Metadata.Name, dep.Spec.Template.Spec.ServiceAccountName)

	// The agent's endpoint is the gateway's Service.
	svc := findObject(t, objs, "Service")
	require.Len(t, svc.Spec.Ports, 1)
	assert.Equal(t, "http://"+svc.Metadata.Name+"."+svc.Metadata.Namespace+".svc.cluster.local:4318", cm.Data["OTLP_ENDPOINT"])
	assert.Equal(t, 4318, svc.Spec.Ports[0].Port)
	require.Len(t, dep.Spec.Template.Spec.Containers, 1)
	ports := dep.Spec.Template.Spec.Containers[0].Ports
	require.Len(t, ports, 1)
	assert.Equal(t, svc.Spec.Ports[0].TargetPort, ports[0].Name)
	assert.Equal(t, 4318, ports[0].ContainerPort)
	t.Logf("checked %s (manifests only: not applied to a cluster)", dir)
}
