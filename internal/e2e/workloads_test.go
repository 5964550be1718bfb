//go:build linux

package e2e

import (
	"fmt"
	"slices"
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
		Labels          map[string]string
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
		Selector map[string]any // a Service's labels; a workload's labelSelector
		Template struct {
			Metadata struct{ Labels map[string]string }
			Spec     podSpec
		}
		// NetworkPolicy
		PodSelector labelSelector `yaml:"podSelector"`
		PolicyTypes []string      `yaml:"policyTypes"`
		Ingress     []struct {
			From []struct {
				NamespaceSelector *labelSelector `yaml:"namespaceSelector"`
				PodSelector       *labelSelector `yaml:"podSelector"`
				IPBlock           any            `yaml:"ipBlock"`
			}
			Ports []struct {
				Protocol string
				Port     int
			}
		}
	}
}

type labelSelector struct {
	MatchLabels      map[string]string `yaml:"matchLabels"`
	MatchExpressions []any             `yaml:"matchExpressions"`
}

type securityContext struct {
	RunAsUser                *int  `yaml:"runAsUser"`
	RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
	Privileged               *bool `yaml:"privileged"`
	AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
	ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
	Capabilities             struct{ Add, Drop []string }
	SeccompProfile           struct{ Type string } `yaml:"seccompProfile"`
}

type containerSpec struct {
	Name  string
	Image string
	Env   []struct {
		Name      string
		ValueFrom struct {
			FieldRef struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	}
	Ports []struct {
		Name          string
		ContainerPort int `yaml:"containerPort"`
	}
	SecurityContext securityContext `yaml:"securityContext"`
	VolumeMounts    []struct {
		Name              string
		MountPath         string `yaml:"mountPath"`
		ReadOnly          bool   `yaml:"readOnly"`
		RecursiveReadOnly string `yaml:"recursiveReadOnly"`
		MountPropagation  string `yaml:"mountPropagation"`
	} `yaml:"volumeMounts"`
}

type podSpec struct {
	ServiceAccountName           string          `yaml:"serviceAccountName"`
	AutomountServiceAccountToken *bool           `yaml:"automountServiceAccountToken"`
	HostNetwork                  bool            `yaml:"hostNetwork"`
	HostPID                      bool            `yaml:"hostPID"`
	HostIPC                      bool            `yaml:"hostIPC"`
	SecurityContext              securityContext `yaml:"securityContext"`
	Containers                   []containerSpec
	Volumes                      []struct {
		Name     string
		HostPath struct{ Path string } `yaml:"hostPath"`
	}
}

// roleGrants returns the verbs a ClusterRole grants per "group/resource".
func roleGrants(role renderedObject) map[string][]string {
	out := map[string][]string{}
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				out[g+"/"+res] = append(out[g+"/"+res], r.Verbs...)
			}
		}
	}
	for k, v := range out {
		slices.Sort(v)
		out[k] = slices.Compact(v)
	}
	return out
}

func findRendered(t *testing.T, objs []renderedObject, kind, name string) renderedObject {
	t.Helper()
	for _, o := range objs {
		if o.Kind == kind && o.Metadata.Name == name {
			return o
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return renderedObject{}
}

// selects reports whether every label of sel is in labels (matchLabels
// only: the manifests use no expressions).
func selects(sel labelSelector, labels map[string]string) bool {
	for k, v := range sel.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return len(sel.MatchExpressions) == 0
}

// checkWorkloadsManifests checks what deploy/kubernetes/workloads renders:
//   - the agent groups by cgroup, sees the host's cgroup hierarchy
//     read-only (recursively), runs k8sattributes with the node filter from
//     the downward API, associates by container.id then k8s.pod.uid only,
//     and extracts namespace, pod, workload and container names;
//   - the agent's ServiceAccount has its token mounted and is bound to a
//     ClusterRole that only lists and watches pods;
//   - the gateway runs in its own namespace under the restricted Pod
//     Security level, the agents export to its Service, and a NetworkPolicy
//     admits TCP to its OTLP port only from the agent pods.
//
// kube_apiserver_test.go applies the same objects to a real API server and
// runs the agent's config with that ServiceAccount's token.
func checkWorkloadsManifests(t *testing.T, objs []renderedObject) {
	ds := findRendered(t, objs, "DaemonSet", "otelcol-tcprtt")
	cm := findRendered(t, objs, "ConfigMap", "otelcol-tcprtt")
	pod := ds.Spec.Template.Spec
	require.Len(t, pod.Containers, 1)
	agent := pod.Containers[0]

	var cfg struct {
		Receivers struct {
			Tcprtt struct {
				GroupBy []string `yaml:"group_by"`
			}
		}
		Processors struct {
			K8s struct {
				AuthType    string `yaml:"auth_type"`
				Passthrough bool
				Filter      struct {
					NodeFromEnvVar string `yaml:"node_from_env_var"`
				}
				Extract     struct{ Metadata []string }
				Association []struct {
					Sources []struct{ From, Name string }
				} `yaml:"pod_association"`
			} `yaml:"k8s_attributes"`
		}
		Service struct {
			Pipelines map[string]struct{ Processors []string }
		}
	}
	require.NoError(t, yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg))
	assert.Contains(t, cfg.Receivers.Tcprtt.GroupBy, "cgroup")
	assert.Equal(t, "k8s_attributes", cfg.Service.Pipelines["metrics"].Processors[0], "k8s_attributes first: the resource processor's attributes are not the pod's")

	// The host's cgroups, read-only all the way down.
	var hostCgroup bool
	for _, v := range pod.Volumes {
		if v.HostPath.Path != "/sys/fs/cgroup" {
			continue
		}
		for _, m := range agent.VolumeMounts {
			if m.Name == v.Name {
				hostCgroup = true
				assert.True(t, m.ReadOnly)
				assert.Equal(t, "Enabled", m.RecursiveReadOnly)
				assert.Contains(t, []string{"", "None"}, m.MountPropagation, "recursiveReadOnly needs mountPropagation None")
			}
		}
	}
	assert.True(t, hostCgroup, "the host's /sys/fs/cgroup is not mounted")

	// k8sattributes as node agents use it.
	k8s := cfg.Processors.K8s
	assert.Equal(t, "serviceAccount", k8s.AuthType)
	assert.False(t, k8s.Passthrough)
	require.NotEmpty(t, k8s.Filter.NodeFromEnvVar, "filter.node_from_env_var: every agent would watch every pod of the cluster")
	assert.True(t, slices.ContainsFunc(agent.Env, func(e struct {
		Name      string
		ValueFrom struct {
			FieldRef struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	}) bool {
		return e.Name == k8s.Filter.NodeFromEnvVar && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}), "%s must come from the downward API's spec.nodeName", k8s.Filter.NodeFromEnvVar)
	var assoc []string
	for _, a := range k8s.Association {
		require.Len(t, a.Sources, 1, "one source per association")
		assert.Equal(t, "resource_attribute", a.Sources[0].From, "associate by the resource's own attributes, never the connection")
		assoc = append(assoc, a.Sources[0].Name)
	}
	assert.Equal(t, []string{"container.id", "k8s.pod.uid"}, assoc)
	for _, m := range []string{"k8s.pod.name", "k8s.namespace.name", "k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name", "k8s.container.name"} {
		assert.Contains(t, k8s.Extract.Metadata, m)
	}

	// The agent's API access: its ServiceAccount, token mounted, read-only.
	if assert.NotNil(t, pod.AutomountServiceAccountToken) {
		assert.True(t, *pod.AutomountServiceAccountToken, "k8sattributes needs the ServiceAccount token")
	}
	sa := findRendered(t, objs, "ServiceAccount", pod.ServiceAccountName)
	binding := findRendered(t, objs, "ClusterRoleBinding", "otelcol-tcprtt")
	require.Len(t, binding.Subjects, 1)
	assert.Equal(t, sa.Metadata.Name, binding.Subjects[0].Name)
	assert.Equal(t, sa.Metadata.Namespace, binding.Subjects[0].Namespace)
	role := findRendered(t, objs, "ClusterRole", binding.RoleRef.Name)
	assert.Equal(t, map[string][]string{"/pods": {"list", "watch"}}, roleGrants(role), "read pods only (kube_apiserver_test.go checks this is what the processor asks for)")

	// The gateway: own namespace, restricted, reached by the agents only.
	dep := findRendered(t, objs, "Deployment", "otelcol-tcprtt-gateway")
	gwNS := findRendered(t, objs, "Namespace", dep.Metadata.Namespace)
	assert.NotEqual(t, ds.Metadata.Namespace, gwNS.Metadata.Name, "the gateway shares the agents' privileged namespace")
	assert.Equal(t, "restricted", gwNS.Metadata.Labels["pod-security.kubernetes.io/enforce"])
	gwPod := dep.Spec.Template.Spec
	assert.Empty(t, restrictedViolations(gwPod))
	if assert.NotNil(t, gwPod.AutomountServiceAccountToken) {
		assert.False(t, *gwPod.AutomountServiceAccountToken, "the gateway reads nothing from the API")
	}
	svc := findRendered(t, objs, "Service", "otelcol-tcprtt-gateway")
	require.Len(t, svc.Spec.Ports, 1)
	assert.Equal(t, "http://"+svc.Metadata.Name+"."+svc.Metadata.Namespace+".svc.cluster.local:4318", cm.Data["OTLP_ENDPOINT"])
	assert.Equal(t, 4318, svc.Spec.Ports[0].Port)
	require.Len(t, gwPod.Containers, 1)
	ports := gwPod.Containers[0].Ports
	require.Len(t, ports, 1)
	assert.Equal(t, svc.Spec.Ports[0].TargetPort, ports[0].Name)
	svcSelector := map[string]string{}
	for k, v := range svc.Spec.Selector {
		svcSelector[k] = fmt.Sprint(v)
	}
	assert.NotEmpty(t, svcSelector)
	assert.True(t, selects(labelSelector{MatchLabels: svcSelector}, dep.Spec.Template.Metadata.Labels), "the Service selects the gateway")

	assert.False(t, pod.HostNetwork, "host-network agents come from the node's address, which the NetworkPolicy's podSelector does not match")
	np := findRendered(t, objs, "NetworkPolicy", "otelcol-tcprtt-gateway")
	assert.Equal(t, dep.Metadata.Namespace, np.Metadata.Namespace)
	assert.True(t, selects(np.Spec.PodSelector, dep.Spec.Template.Metadata.Labels), "the NetworkPolicy selects the gateway's pods")
	assert.NotEmpty(t, np.Spec.PodSelector.MatchLabels, "an empty podSelector selects every pod of the namespace")
	assert.Equal(t, []string{"Ingress"}, np.Spec.PolicyTypes)
	require.Len(t, np.Spec.Ingress, 1, "one ingress rule: the agents")
	rule := np.Spec.Ingress[0]
	require.Len(t, rule.From, 1)
	from := rule.From[0]
	assert.Nil(t, from.IPBlock)
	// Namespace and pod selectors in one peer: pods matching both (two
	// peers would admit either).
	require.NotNil(t, from.NamespaceSelector, "without a namespaceSelector the podSelector means the gateway's own namespace")
	require.NotNil(t, from.PodSelector)
	assert.Equal(t, map[string]string{"kubernetes.io/metadata.name": ds.Metadata.Namespace}, from.NamespaceSelector.MatchLabels)
	assert.True(t, selects(*from.PodSelector, ds.Spec.Template.Metadata.Labels), "the policy admits the agent pods")
	assert.NotEmpty(t, from.PodSelector.MatchLabels)
	require.Len(t, rule.Ports, 1)
	assert.Equal(t, ports[0].ContainerPort, rule.Ports[0].Port)
	assert.Equal(t, "TCP", rule.Ports[0].Protocol)
}
