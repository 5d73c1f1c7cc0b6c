package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/internal/testcluster"
)

// rankzip status against a cluster that requires client certificates: the
// --tls-* flags without a certificate are refused by the server, with one
// the call is served (and the job, which does not exist, not found).
func TestStatusMTLS(t *testing.T) {
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
	for _, k := range []string{"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_PROFILE", "TEMPORAL_API_KEY"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	t.Setenv("TEMPORAL_CONFIG_FILE", filepath.Join(dir, "none.toml"))
	base := []string{"rankzip-nosuchjob", "--temporal", srv.HostPort, "--tls-ca-path", certs.CAFile, "--tls-server-name", certs.ServerName}
	err = runStatus(base, io.Discard, io.Discard)
	t.Logf("without a client certificate: %v", err)
	if err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Errorf("without a client certificate: err = %v, want the server's refusal", err)
	}
	err = runStatus(append(base, "--tls-cert-path", certs.ClientCertFile, "--tls-key-path", certs.ClientKeyFile), io.Discard, io.Discard)
	t.Logf("with the client certificate: %v", err)
	if err == nil || strings.Contains(err.Error(), "certificate") || !strings.Contains(err.Error(), "no job rankzip-nosuchjob") {
		t.Errorf("with the client certificate: err = %v, want the job not found", err)
	}
}
