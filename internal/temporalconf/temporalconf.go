// Package temporalconf is how rankzip's commands find and authenticate to a
// Temporal cluster, the way Temporal's own CLI and SDKs do: a profile of a
// TOML config file (TEMPORAL_CONFIG_FILE, else the user config directory's
// temporalio/temporal.toml; profile TEMPORAL_PROFILE, else "default"), then
// the environment (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
// TEMPORAL_TLS, TEMPORAL_TLS_CLIENT_CERT_PATH, TEMPORAL_TLS_CLIENT_KEY_PATH,
// TEMPORAL_TLS_SERVER_CA_CERT_PATH, TEMPORAL_TLS_SERVER_NAME and the rest
// that go.temporal.io/sdk/contrib/envconfig reads), then command-line flags,
// each overriding the one before.
//
// Secrets (the API key, client key material) are passed to the SDK only:
// String and LogValue describe a Config without them.
package temporalconf

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"
)

// DefaultNamespace is the namespace when none is configured.
const DefaultNamespace = "default"

// Flags are the command-line settings; an empty one leaves the profile's
// and the environment's value.
type Flags struct {
	Address    string
	Namespace  string
	Profile    string
	ConfigFile string
	TLS        bool
	ClientCert string
	ClientKey  string
	ServerCA   string
	ServerName string
	APIKey     string

	env envconfig.EnvLookup // nil: the process environment
}

// Register adds the flags to fs, with Temporal's CLI's names where rankzip
// has no older one (--temporal is the address).
func Register(fs *flag.FlagSet) *Flags {
	f := &Flags{}
	fs.StringVar(&f.Address, "temporal", "", "Temporal frontend HOST:PORT (default $TEMPORAL_ADDRESS or the Temporal profile's address)")
	fs.StringVar(&f.Namespace, "namespace", "", "Temporal namespace (default $TEMPORAL_NAMESPACE, the profile's, else \"default\")")
	fs.StringVar(&f.Profile, "temporal-profile", "", "profile of the Temporal config file (default $TEMPORAL_PROFILE, else \"default\")")
	fs.StringVar(&f.ConfigFile, "temporal-config-file", "", "Temporal config file, TOML as Temporal's CLI writes it (default $TEMPORAL_CONFIG_FILE, else the user config directory's temporalio/temporal.toml)")
	fs.BoolVar(&f.TLS, "tls", false, "connect to Temporal with TLS (implied by the other --tls-* flags and by an API key; default $TEMPORAL_TLS)")
	fs.StringVar(&f.ClientCert, "tls-cert-path", "", "client certificate (PEM) for mTLS (default $TEMPORAL_TLS_CLIENT_CERT_PATH)")
	fs.StringVar(&f.ClientKey, "tls-key-path", "", "client private key (PEM) for mTLS (default $TEMPORAL_TLS_CLIENT_KEY_PATH)")
	fs.StringVar(&f.ServerCA, "tls-ca-path", "", "CA certificate (PEM) the server's certificate must chain to, instead of the system's (default $TEMPORAL_TLS_SERVER_CA_CERT_PATH)")
	fs.StringVar(&f.ServerName, "tls-server-name", "", "server name the server's certificate must carry, when not the address's host (default $TEMPORAL_TLS_SERVER_NAME)")
	fs.StringVar(&f.APIKey, "api-key", "", "Temporal API key (default $TEMPORAL_API_KEY; a flag is visible to other users of the host in the process list: prefer the variable or a profile)")
	return f
}

// Config is the resolved client configuration.
type Config struct {
	p envconfig.ClientConfigProfile
}

// Load reads the profile and the environment and applies the flags.
func (f *Flags) Load() (*Config, error) {
	p, err := envconfig.LoadClientConfigProfile(envconfig.LoadClientConfigProfileOptions{
		ConfigFilePath:    f.ConfigFile,
		ConfigFileProfile: f.Profile,
		EnvLookup:         f.env,
	})
	if err != nil {
		return nil, fmt.Errorf("temporal client configuration: %w", err)
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&p.Address, f.Address)
	set(&p.Namespace, f.Namespace)
	set(&p.APIKey, f.APIKey)
	if f.TLS || f.ClientCert != "" || f.ClientKey != "" || f.ServerCA != "" || f.ServerName != "" {
		if p.TLS == nil {
			p.TLS = &envconfig.ClientConfigTLS{}
		}
		p.TLS.Disabled = false
		// A path given on the command line replaces data from the
		// profile or environment (envconfig refuses both at once).
		if f.ClientCert != "" {
			p.TLS.ClientCertPath, p.TLS.ClientCertData = f.ClientCert, nil
		}
		if f.ClientKey != "" {
			p.TLS.ClientKeyPath, p.TLS.ClientKeyData = f.ClientKey, nil
		}
		if f.ServerCA != "" {
			p.TLS.ServerCACertPath, p.TLS.ServerCACertData = f.ServerCA, nil
		}
		set(&p.TLS.ServerName, f.ServerName)
	}
	if p.Namespace == "" {
		p.Namespace = DefaultNamespace
	}
	return &Config{p: p}, nil
}

// Address is the frontend's HOST:PORT, "" when none is configured.
func (c *Config) Address() string { return c.p.Address }

// Namespace is the namespace to use.
func (c *Config) Namespace() string { return c.p.Namespace }

// TLS reports whether the connection uses TLS.
func (c *Config) TLS() bool {
	if c.p.TLS != nil {
		return !c.p.TLS.Disabled
	}
	return c.p.APIKey != ""
}

// ClientOptions are the SDK's options for this configuration: address,
// namespace, TLS (client certificate, server CA and name) and API key. It
// fails when a certificate or key cannot be read.
func (c *Config) ClientOptions() (client.Options, error) {
	o, err := c.p.ToClientOptions(envconfig.ToClientOptionsRequest{})
	if err != nil {
		return o, fmt.Errorf("temporal client configuration: %w", err)
	}
	return o, nil
}

// String describes the configuration without its secrets.
func (c *Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s namespace %s", c.p.Address, c.p.Namespace)
	if !c.TLS() {
		b.WriteString(", no TLS")
	} else {
		b.WriteString(", TLS")
		if t := c.p.TLS; t != nil {
			switch {
			case t.ClientCertPath != "":
				fmt.Fprintf(&b, ", client certificate %s", t.ClientCertPath)
			case len(t.ClientCertData) > 0:
				b.WriteString(", client certificate from data")
			}
			switch {
			case t.ServerCACertPath != "":
				fmt.Fprintf(&b, ", server CA %s", t.ServerCACertPath)
			case len(t.ServerCACertData) > 0:
				b.WriteString(", server CA from data")
			}
			if t.ServerName != "" {
				fmt.Fprintf(&b, ", server name %s", t.ServerName)
			}
		}
	}
	if c.p.APIKey != "" {
		b.WriteString(", API key set")
	}
	return b.String()
}

// LogValue logs the configuration as String describes it.
func (c *Config) LogValue() slog.Value { return slog.StringValue(c.String()) }

// HostID names this host's task queue (workers with the same id must see
// the same local files): id, else $RANKZIP_HOST_ID, else the host name.
func HostID(id string) (string, error) {
	if id == "" {
		id = os.Getenv("RANKZIP_HOST_ID")
	}
	if id != "" {
		return id, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("host name for the host task queue (set --host-id or RANKZIP_HOST_ID): %w", err)
	}
	return h, nil
}
