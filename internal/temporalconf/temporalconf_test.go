package temporalconf

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"

	"github.com/rankzip/rankzip/internal/testcluster"
)

type mapEnv map[string]string

func (m mapEnv) Environ() []string {
	var s []string
	for k, v := range m {
		s = append(s, k+"="+v)
	}
	return s
}

func (m mapEnv) LookupEnv(k string) (string, bool) { v, ok := m[k]; return v, ok }

var _ envconfig.EnvLookup = mapEnv(nil)

const secretKey = "rk-secret-0d9f7c1e"

// A profile of the config file, then the environment, then the flags; the
// description of the result never holds the API key.
func TestLoadOrder(t *testing.T) {
	dir := t.TempDir()
	toml := `[profile.prod]
address = "file.example:7233"
namespace = "file-ns"
api_key = "` + secretKey + `"
[profile.prod.tls]
server_name = "file-name"
`
	cfgFile := filepath.Join(dir, "temporal.toml")
	if err := os.WriteFile(cfgFile, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	env := mapEnv{"TEMPORAL_CONFIG_FILE": cfgFile, "TEMPORAL_PROFILE": "prod", "TEMPORAL_NAMESPACE": "env-ns"}
	for _, tc := range []struct {
		args                      []string
		address, namespace, sname string
	}{
		{nil, "file.example:7233", "env-ns", "file-name"},
		{[]string{"--temporal", "flag.example:7233", "--namespace", "flag-ns", "--tls-server-name", "flag-name"}, "flag.example:7233", "flag-ns", "flag-name"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		f := Register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		f.env = env
		c, err := f.Load()
		if err != nil {
			t.Fatal(err)
		}
		if c.Address() != tc.address || c.Namespace() != tc.namespace || c.p.TLS.ServerName != tc.sname || !c.TLS() {
			t.Errorf("%v: got %s (server name %q), want %s namespace %s server name %s", tc.args, c, c.p.TLS.ServerName, tc.address, tc.namespace, tc.sname)
		}
		if s := c.String(); strings.Contains(s, secretKey) || !strings.Contains(s, "API key set") {
			t.Errorf("description %q: holds the key, or does not say one is set", s)
		}
		o, err := c.ClientOptions()
		if err != nil {
			t.Fatal(err)
		}
		if o.Credentials == nil || o.ConnectionOptions.TLS == nil || o.HostPort != tc.address {
			t.Errorf("%v: options lack the API key credentials or TLS, or have address %q", tc.args, o.HostPort)
		}
	}

	// A missing profile named by TEMPORAL_PROFILE is an error, not the
	// defaults.
	f := &Flags{env: mapEnv{"TEMPORAL_CONFIG_FILE": cfgFile, "TEMPORAL_PROFILE": "nope"}}
	if _, err := f.Load(); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing profile: err = %v, want one naming it", err)
	}
	// Nothing configured: no address (cmd/rankzip then embeds a server).
	f = &Flags{env: mapEnv{"TEMPORAL_CONFIG_FILE": filepath.Join(dir, "absent.toml")}}
	c, err := f.Load()
	if err != nil || c.Address() != "" || c.Namespace() != DefaultNamespace || c.TLS() {
		t.Errorf("empty configuration: %v, %v", c, err)
	}
}

// The embedded Temporal server with mTLS on its frontend refuses a client
// without a certificate (with TLS and the right CA, and without TLS) and
// serves one that presents the client certificate.
func TestMTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Temporal server")
	}
	dir := t.TempDir()
	certs, err := testcluster.MakeCerts(dir, "temporal.rankzip.test")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := testcluster.Start(dir, testcluster.Options{TLS: certs})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()

	dial := func(name string, env mapEnv) error {
		env["TEMPORAL_CONFIG_FILE"] = filepath.Join(dir, "none.toml")
		env["TEMPORAL_ADDRESS"] = srv.HostPort
		f := &Flags{env: env}
		c, err := f.Load()
		if err != nil {
			t.Fatal(err)
		}
		o, err := c.ClientOptions()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cl, err := client.DialContext(ctx, o)
		if err == nil {
			defer cl.Close()
			_, err = cl.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: testcluster.Namespace})
		}
		t.Logf("%-34s (%s): err = %v", name, c, err)
		return err
	}
	tlsEnv := func() mapEnv {
		return mapEnv{"TEMPORAL_TLS_SERVER_CA_CERT_PATH": certs.CAFile, "TEMPORAL_TLS_SERVER_NAME": certs.ServerName}
	}
	if err := dial("no TLS", mapEnv{}); err == nil {
		t.Error("a client without TLS was served")
	}
	if err := dial("TLS without a client certificate", tlsEnv()); err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Errorf("a client without a certificate: err = %v, want the server's \"certificate required\"", err)
	}
	env := tlsEnv()
	env["TEMPORAL_TLS_CLIENT_CERT_PATH"], env["TEMPORAL_TLS_CLIENT_KEY_PATH"] = certs.ClientCertFile, certs.ClientKeyFile
	env["TEMPORAL_API_KEY"] = secretKey
	if err := dial("mTLS with the client certificate", env); err != nil {
		t.Errorf("a client with the certificate was refused: %v", err)
	}
}
