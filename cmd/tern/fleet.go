package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tern-iot/tern/internal/server"
)

// fleetConfig is what `tern fleet login` saves (~/.config/tern/config.json, 0600).
type fleetConfig struct {
	Server        string `json:"server"`
	Key           string `json:"key"`
	CAFingerprint string `json:"ca_fingerprint"`
}

func fleetConfigPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "tern", "config.json"), nil
}

func loadFleetConfig() (*fleetConfig, error) {
	p, err := fleetConfigPath()
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, errors.New("not logged in: run `tern fleet login URL --key KEY` first")
	}
	if err != nil {
		return nil, err
	}
	var c fleetConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return &c, nil
}

func saveFleetConfig(c *fleetConfig) (string, error) {
	p, err := fleetConfigPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	data, _ := json.MarshalIndent(c, "", "  ")
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return "", err
	}
	return p, os.Rename(tmp, p)
}

// fleetClient returns an API client from the saved login.
func fleetClient() (*server.Client, error) {
	c, err := loadFleetConfig()
	if err != nil {
		return nil, err
	}
	return server.NewClient(c.Server, c.Key, c.CAFingerprint), nil
}

func fleetCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}

// call runs one API request with the saved login.
func call(method, path string, in, out any) error {
	c, err := fleetClient()
	if err != nil {
		return err
	}
	ctx, cancel := fleetCtx()
	defer cancel()
	return c.Do(ctx, method, path, in, out)
}

func fleetCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "fleet", Short: "Manage the fleet through a tern server: devices, tokens, keys, groups, releases, campaigns, events, webhooks"}
	cmd.AddCommand(fleetLoginCmd(), fleetDevicesCmd(), fleetTokensCmd(), fleetKeysCmd(), fleetEventsCmd(),
		fleetGroupsCmd(), fleetWebhooksCmd(), fleetAccountsCmd(), fleetReleaseKeysCmd(), fleetReleasesCmd(), fleetCampaignsCmd(), fleetLogsCmd(), fleetPolicyCmd())
	return cmd
}

func fleetLoginCmd() *cobra.Command {
	var key, fp string
	cmd := &cobra.Command{
		Use:   "login URL --key KEY [--ca-fingerprint SHA256]",
		Short: "Save the server URL and API key; pin the server CA's fingerprint",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := url.Parse(args[0])
			if err != nil || u.Scheme != "https" || u.Host == "" {
				return fmt.Errorf("server URL must be https://host:port")
			}
			ctx, cancel := fleetCtx()
			defer cancel()
			fp = strings.ToLower(strings.TrimPrefix(fp, "sha256:"))
			if fp == "" {
				host := u.Host
				if u.Port() == "" {
					host += ":443"
				}
				if fp, err = server.FetchCAFingerprint(ctx, host); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "pinning the server CA by trust on first use: sha256:%s\n(compare with what `tern server` printed; pass --ca-fingerprint to check it)\n", fp)
			}
			c := server.NewClient(args[0], key, fp)
			var acct struct{ Name string }
			if err := c.Do(ctx, "GET", "/api/v1/account", nil, &acct); err != nil {
				return err
			}
			p, err := saveFleetConfig(&fleetConfig{Server: strings.TrimSuffix(args[0], "/"), Key: key, CAFingerprint: fp})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "logged in to %s (account %s); saved in %s\n", args[0], acct.Name, p)
			return nil
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "API key (ternk.<id>.<secret>)")
	cmd.Flags().StringVar(&fp, "ca-fingerprint", "", "expected SHA-256 fingerprint of the server CA (default: trust on first use)")
	cmd.MarkFlagRequired("key")
	return cmd
}

// output prints v as JSON with --json, else through table.
func output(w io.Writer, asJSON bool, v any, table func(tw *tabwriter.Writer)) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String() + " ago"
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Format("2006-01-02")
}

func labelString(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	slices.Sort(parts)
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}
