// Package temporalserver builds a single-process Temporal server
// (go.temporal.io/server, its state in SQLite): the configuration of its
// four services and the server itself. cmd/rankzip's embedded server and
// the test cluster of internal/testcluster both start theirs through it, so
// the two cannot drift apart.
package temporalserver

import (
	"fmt"
	"time"

	"go.temporal.io/server/common/authorization"
	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	"go.temporal.io/server/common/log"
	"go.temporal.io/server/temporal"
)

// Config configures the frontend, history, matching and worker services
// (in that order in grpc and membership) listening on ip, persisting in
// sqlCfg, with no archival and no metrics (nil: a no-op handler, one
// listener fewer). hostPort is the frontend's address.
func Config(ip, hostPort string, grpc, membership [4]int, sqlCfg *config.SQL) *config.Config {
	svc := func(i int) config.Service {
		return config.Service{RPC: config.RPC{GRPCPort: grpc[i], MembershipPort: membership[i], BindOnIP: ip}}
	}
	cfg := &config.Config{}
	cfg.Global.Membership = config.Membership{MaxJoinDuration: 30 * time.Second, BroadcastAddress: ip}
	cfg.Persistence = config.Persistence{DefaultStore: "sqlite", VisibilityStore: "sqlite", NumHistoryShards: 1,
		DataStores: map[string]config.DataStore{"sqlite": {SQL: sqlCfg}}}
	cfg.ClusterMetadata = &cluster.Config{FailoverVersionIncrement: 10, MasterClusterName: "active", CurrentClusterName: "active",
		ClusterInformation: map[string]cluster.ClusterInformation{"active": {Enabled: true, InitialFailoverVersion: 1, RPCAddress: hostPort}}}
	cfg.DCRedirectionPolicy = config.DCRedirectionPolicy{Policy: "noop"}
	cfg.Services = map[string]config.Service{"frontend": svc(0), "history": svc(1), "matching": svc(2), "worker": svc(3)}
	cfg.Archival = config.Archival{History: config.HistoryArchival{State: "disabled"}, Visibility: config.VisibilityArchival{State: "disabled"}}
	cfg.NamespaceDefaults = config.NamespaceDefaults{Archival: config.ArchivalNamespaceDefaults{
		History: config.HistoryArchivalNamespaceDefaults{State: "disabled"}, Visibility: config.VisibilityArchivalNamespaceDefaults{State: "disabled"}}}
	cfg.PublicClient = config.PublicClient{HostPort: hostPort}
	return cfg
}

// New builds (does not start) the server of cfg, logging to logger, with
// the authorizer and claim mapper cfg names and no dynamic configuration.
func New(cfg *config.Config, logger log.Logger) (temporal.Server, error) {
	authorizer, err := authorization.GetAuthorizerFromConfig(&cfg.Global.Authorization)
	if err != nil {
		return nil, fmt.Errorf("authorizer: %w", err)
	}
	claims, err := authorization.GetClaimMapperFromConfig(&cfg.Global.Authorization, logger)
	if err != nil {
		return nil, fmt.Errorf("claim mapper: %w", err)
	}
	return temporal.NewServer(
		temporal.WithConfig(cfg),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithLogger(logger),
		temporal.WithAuthorizer(authorizer),
		temporal.WithClaimMapper(func(*config.Config) authorization.ClaimMapper { return claims }),
		temporal.WithDynamicConfigClient(dynamicconfig.StaticClient{}),
	)
}
