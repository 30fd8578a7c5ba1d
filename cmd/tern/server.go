package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tern-iot/tern/internal/server"
)

func serverCmd() *cobra.Command {
	var cfg server.Config
	var logLevel string
	cmd := &cobra.Command{
		Use:   "server --data DIR [--http ADDR] [--mqtt ADDR] [--db URL] [--broker URL]",
		Short: "Run the management server: device directory, enrollment, MQTT broker, REST API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return err
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			cfg.Out = cmd.OutOrStdout()
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return server.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data", "/var/lib/tern-server", "data directory (SQLite database, admin.token)")
	f.StringVar(&cfg.HTTPAddr, "http", ":8443", "HTTPS address of the API and enrollment")
	f.StringVar(&cfg.MQTTAddr, "mqtt", ":8883", "MQTT (mutual TLS) address of the embedded broker")
	f.StringVar(&cfg.DB, "db", "", "PostgreSQL URL (postgres://...); default a SQLite file in --data")
	f.StringVar(&cfg.Broker, "broker", "", "external MQTT 5 broker (mqtts://host:port) instead of the embedded one")
	f.StringVar(&cfg.BrokerCert, "broker-cert", "", "client certificate (PEM) for the external broker; default issued by the server CA")
	f.StringVar(&cfg.BrokerKey, "broker-key", "", "key (PEM) of --broker-cert")
	f.StringVar(&cfg.MQTTAdvertise, "mqtt-advertise", "", "broker URL given to devices (default: the host they enrolled through)")
	f.StringSliceVar(&cfg.Hosts, "tls-san", nil, "extra DNS names or IPs for the server certificate")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "server certificate (PEM, with chain) instead of one from the server CA")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "key (PEM) of --tls-cert")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
