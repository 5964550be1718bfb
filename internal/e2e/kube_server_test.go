//go:build linux

package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tcprtt/tcprtt/internal/testenv"
)

// A real Kubernetes API server for the tests: Debian's etcd and a
// kube-apiserver built from k8s.io/kubernetes (`make etcd kube-apiserver`),
// on loopback ports, with RBAC, the default admission plugins (Pod Security
// among them), ServiceAccount tokens and an audit log of what the tested
// ServiceAccount asked for. There is no controller-manager (no `default`
// ServiceAccounts, no ReplicaSets from Deployments) and no kubelet (pods are
// created with a nodeName and their status is set by the test).

const kubeVersion = "v1.37.2" // the Makefile's KUBE_VERSION

// kubeAPI is a running etcd + kube-apiserver.
type kubeAPI struct {
	url, adminToken string
	caPEM           []byte
	client          *http.Client
	auditLog        string
	apiserver       *collector
}

// requireBinary returns env's value or def if the file exists; missing: a
// failure under TCPRTT_REQUIRE_BPF=1, a skip otherwise.
func requireBinary(t *testing.T, env, def, make string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		p = def
	}
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("%v: run `make %s` or set %s", err, make, env)
		if os.Getenv(testenv.RequireBPFEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// startKubeAPI starts etcd and kube-apiserver and waits until the API
// server is ready (its RBAC bootstrap roles included). auditUser is the
// user whose requests go to the audit log.
func startKubeAPI(t *testing.T, auditUser string) *kubeAPI {
	t.Helper()
	cache := cacheDir(t)
	apiserverBin := requireBinary(t, "TCPRTT_KUBE_APISERVER", filepath.Join(cache, "kube-apiserver-"+kubeVersion, "kube-apiserver"), "kube-apiserver")
	etcdBin := requireBinary(t, "TCPRTT_ETCD", filepath.Join(cache, "etcd", "usr", "bin", "etcd"), "etcd")
	dir := t.TempDir()

	client, peer := freeLoopbackAddr(t), freeLoopbackAddr(t)
	// Its output is logged if the test fails (startProcess).
	startProcess(t, etcdBin, "--name=default", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://"+client, "--advertise-client-urls=http://"+client,
		"--listen-peer-urls=http://"+peer, "--initial-advertise-peer-urls=http://"+peer,
		"--initial-cluster=default=http://"+peer)

	certPEM, keyPEM := selfSignedServing(t)
	saKey := ecKeyPEM(t)
	admin := randomToken(t)
	files := map[string][]byte{
		"serving.crt": certPEM, "serving.key": keyPEM, "sa.key": saKey,
		"tokens.csv": []byte(admin + ",admin,admin,system:masters\n"),
		"audit.yaml": []byte(`apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: ["` + auditUser + `"]
  - level: None
`),
	}
	for name, data := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), data, 0o600))
	}
	addr := freeLoopbackAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	k := &kubeAPI{url: "https://" + addr, adminToken: admin, caPEM: certPEM, auditLog: filepath.Join(dir, "audit.log")}
	k.apiserver = startProcess(t, apiserverBin,
		"--etcd-servers=http://"+client, "--bind-address=127.0.0.1", "--secure-port="+port,
		"--cert-dir="+filepath.Join(dir, "certs"),
		"--tls-cert-file="+filepath.Join(dir, "serving.crt"), "--tls-private-key-file="+filepath.Join(dir, "serving.key"),
		"--service-account-key-file="+filepath.Join(dir, "sa.key"), "--service-account-signing-key-file="+filepath.Join(dir, "sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc", "--token-auth-file="+filepath.Join(dir, "tokens.csv"),
		"--authorization-mode=RBAC", "--endpoint-reconciler-type=none", "--service-cluster-ip-range=10.96.0.0/16",
		"--audit-policy-file="+filepath.Join(dir, "audit.yaml"), "--audit-log-path="+k.auditLog)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(certPEM))
	k.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	start := time.Now()
	deadline := start.Add(2 * time.Minute)
	for {
		code, body := k.do(t, "GET", "/readyz", "", nil, admin)
		if code == http.StatusOK {
			break
		}
		if err := k.apiserver.exited(); err != nil {
			t.Fatalf("kube-apiserver exited: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready within 2m: %d %s", code, body)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("etcd + kube-apiserver %s ready on %s in %s", kubeVersion, k.url, time.Since(start).Round(100*time.Millisecond))
	return k
}

// do sends one request with a bearer token; a connection error counts as
// status 0 (the server is not up yet).
func (k *kubeAPI) do(t *testing.T, method, path, contentType string, body []byte, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, k.url+path, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, out
}

// kinds maps the kinds the manifests and tests use to their API paths.
var kinds = map[string]struct {
	prefix, resource string
	namespaced       bool
}{
	"Namespace":          {"/api/v1", "namespaces", false},
	"ServiceAccount":     {"/api/v1", "serviceaccounts", true},
	"ConfigMap":          {"/api/v1", "configmaps", true},
	"Service":            {"/api/v1", "services", true},
	"Pod":                {"/api/v1", "pods", true},
	"ClusterRole":        {"/apis/rbac.authorization.k8s.io/v1", "clusterroles", false},
	"ClusterRoleBinding": {"/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", false},
	"DaemonSet":          {"/apis/apps/v1", "daemonsets", true},
	"Deployment":         {"/apis/apps/v1", "deployments", true},
	"ReplicaSet":         {"/apis/apps/v1", "replicasets", true},
	"StatefulSet":        {"/apis/apps/v1", "statefulsets", true},
	"NetworkPolicy":      {"/apis/networking.k8s.io/v1", "networkpolicies", true},
}

func objectPath(t *testing.T, obj map[string]any) string {
	t.Helper()
	kind, _ := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	ns, _ := meta["namespace"].(string)
	k, ok := kinds[kind]
	require.True(t, ok, "no API path known for kind %q", kind)
	if k.namespaced {
		require.NotEmpty(t, ns, "%s %s has no namespace", kind, name)
		return k.prefix + "/namespaces/" + ns + "/" + k.resource + "/" + url.PathEscape(name)
	}
	return k.prefix + "/" + k.resource + "/" + url.PathEscape(name)
}

// apply is a server-side apply (what `kubectl apply --server-side` sends)
// with strict field validation: an unknown or misspelt field fails. dryRun
// has the server run validation and admission without storing anything. It
// returns the status and the body (the object as stored, or the error).
func (k *kubeAPI) apply(t *testing.T, obj map[string]any, dryRun bool) (int, []byte) {
	t.Helper()
	body, err := json.Marshal(obj) // JSON is YAML
	require.NoError(t, err)
	q := "?fieldManager=tcprtt-e2e&force=true&fieldValidation=Strict"
	if dryRun {
		q += "&dryRun=All"
	}
	return k.do(t, "PATCH", objectPath(t, obj)+q, "application/apply-patch+yaml", body, k.adminToken)
}

// mustApply applies obj for real and returns the stored object.
func (k *kubeAPI) mustApply(t *testing.T, obj map[string]any) map[string]any {
	t.Helper()
	code, body := k.apply(t, obj, false)
	require.Contains(t, []int{http.StatusOK, http.StatusCreated}, code, "apply %s: %s", objectPath(t, obj), body)
	var out map[string]any
	require.NoError(t, json.Unmarshal(body, &out))
	return out
}

// uidOf returns metadata.uid of a stored object.
func uidOf(obj map[string]any) string {
	meta, _ := obj["metadata"].(map[string]any)
	uid, _ := meta["uid"].(string)
	return uid
}

// serviceAccountToken asks the TokenRequest API for a token of the
// ServiceAccount ns/name (what the kubelet mounts into its pods).
func (k *kubeAPI) serviceAccountToken(t *testing.T, ns, name string) string {
	t.Helper()
	code, body := k.do(t, "POST", "/api/v1/namespaces/"+ns+"/serviceaccounts/"+name+"/token", "application/json",
		[]byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}`), k.adminToken)
	require.Equal(t, http.StatusCreated, code, "TokenRequest for %s/%s: %s", ns, name, body)
	var tr struct{ Status struct{ Token string } }
	require.NoError(t, json.Unmarshal(body, &tr))
	require.NotEmpty(t, tr.Status.Token)
	return tr.Status.Token
}

// auditEvent is one request of the audited user.
type auditEvent struct {
	Verb      string
	ObjectRef struct {
		Resource, APIGroup, Subresource string
	} `json:"objectRef"`
	ResponseStatus struct{ Code int } `json:"responseStatus"`
	RequestURI     string             `json:"requestURI"`
}

func (k *kubeAPI) auditEvents(t *testing.T) []auditEvent {
	t.Helper()
	raw, err := os.ReadFile(k.auditLog)
	require.NoError(t, err, "audit log")
	var out []auditEvent
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		if line == "" {
			continue
		}
		var e auditEvent
		require.NoError(t, json.Unmarshal([]byte(line), &e), "audit line %q", line)
		out = append(out, e)
	}
	return out
}

// selfSignedServing makes the API server's certificate: self-signed (its
// own CA, what a pod's ca.crt holds) for 127.0.0.1 and localhost.
func selfSignedServing(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tcprtt-e2e-apiserver"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func ecKeyPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func randomToken(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return fmt.Sprintf("%x", b)
}
