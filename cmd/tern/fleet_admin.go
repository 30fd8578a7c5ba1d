package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tern-iot/tern/internal/store"
)

func fleetTokensCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "tokens", Aliases: []string{"token"}, Short: "Enrollment tokens"}
	var asJSON, manual bool
	var expires, desc string
	var maxUses int
	var labels []string
	create := &cobra.Command{
		Use: "create [--expires 24h] [--max-uses N] [--label K=V]... [--manual]", Short: "Create an enrollment token (shown once)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := map[string]any{"expires": expires, "max_uses": maxUses, "description": desc}
			if manual {
				req["approval"] = "manual"
			}
			lm := map[string]string{}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok {
					return fmt.Errorf("--label %q: want K=V", l)
				}
				lm[k] = v
			}
			req["labels"] = lm
			var out struct {
				store.Token
				Secret string `json:"token"`
			}
			if err := call("POST", "/api/v1/tokens", req, &out); err != nil {
				return err
			}
			if asJSON {
				return output(cmd.OutOrStdout(), true, out, nil)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n", out.Secret)
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s: %d use(s), expires %s; give it to the device: ternd --server URL --enroll-token TOKEN\n",
				out.ID, out.MaxUses, out.ExpiresAt.Local().Format("2006-01-02 15:04"))
			return nil
		},
	}
	create.Flags().StringVar(&expires, "expires", "24h", "lifetime (e.g. 1h, 7d)")
	create.Flags().IntVar(&maxUses, "max-uses", 1, "how many devices may enroll with it")
	create.Flags().StringSliceVar(&labels, "label", nil, "label applied to devices enrolled with it (K=V, repeatable)")
	create.Flags().BoolVar(&manual, "manual", false, "devices wait as pending until an operator accepts them")
	create.Flags().StringVar(&desc, "description", "", "what the token is for")
	ls := &cobra.Command{
		Use: "ls", Short: "List enrollment tokens", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ts []store.Token
			if err := call("GET", "/api/v1/tokens", nil, &ts); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, ts, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tUSES\tEXPIRES\tAPPROVAL\tREVOKED\tLABELS\tDESCRIPTION")
				for _, t := range ts {
					rev := "-"
					if !t.RevokedAt.IsZero() {
						rev = t.RevokedAt.Local().Format("2006-01-02")
					}
					fmt.Fprintf(tw, "%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Uses, t.MaxUses, t.ExpiresAt.Local().Format("2006-01-02 15:04"),
						t.Approval, rev, labelString(t.Labels), t.Description)
				}
			})
		},
	}
	cmd.AddCommand(create, ls, revokeCmd("tokens", "an enrollment token"))
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func revokeCmd(collection, what string) *cobra.Command {
	return &cobra.Command{
		Use: "revoke ID", Short: "Revoke " + what, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := call("DELETE", "/api/v1/"+collection+"/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", args[0])
			return nil
		},
	}
}

func fleetKeysCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Aliases: []string{"key"}, Short: "API keys of your account"}
	var asJSON bool
	var name, role string
	create := &cobra.Command{
		Use: "create --name NAME --role admin|operator|viewer", Short: "Create an API key (shown once)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				store.APIKey
				Key string `json:"key"`
			}
			if err := call("POST", "/api/v1/keys", map[string]any{"name": name, "role": role}, &out); err != nil {
				return err
			}
			if asJSON {
				return output(cmd.OutOrStdout(), true, out, nil)
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.Key)
			fmt.Fprintf(cmd.ErrOrStderr(), "key %s (%s): shown once, keep it safe\n", out.ID, out.Role)
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "what the key is for")
	create.Flags().StringVar(&role, "role", "viewer", "admin, operator or viewer")
	create.MarkFlagRequired("name")
	ls := &cobra.Command{
		Use: "ls", Short: "List API keys", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ks []store.APIKey
			if err := call("GET", "/api/v1/keys", nil, &ks); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, ks, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tROLE\tNAME\tCREATED\tREVOKED")
				for _, k := range ks {
					rev := "-"
					if !k.RevokedAt.IsZero() {
						rev = k.RevokedAt.Local().Format("2006-01-02")
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.ID, k.Role, k.Name, k.CreatedAt.Local().Format("2006-01-02"), rev)
				}
			})
		},
	}
	cmd.AddCommand(create, ls, revokeCmd("keys", "an API key"))
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func fleetEventsCmd() *cobra.Command {
	var asJSON, follow bool
	var after int64
	cmd := &cobra.Command{
		Use: "events [-f] [--after SEQ]", Short: "Show the account's events; -f follows new ones", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			print := func(raw json.RawMessage) error {
				if asJSON {
					_, err := fmt.Fprintf(w, "%s\n", raw)
					return err
				}
				var e store.Event
				if err := json.Unmarshal(raw, &e); err != nil {
					return err
				}
				_, err := fmt.Fprintf(w, "%d  %s  %-14s %s %s\n", e.Seq, e.At.Local().Format("2006-01-02 15:04:05"), e.Type, e.DeviceID, compactData(e.Data))
				return err
			}
			if follow {
				c, err := fleetClient()
				if err != nil {
					return err
				}
				ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
				defer stop()
				start := int64(-1)
				if cmd.Flags().Changed("after") {
					start = after
				}
				return c.Follow(ctx, start, print)
			}
			var evs []json.RawMessage
			if err := call("GET", fmt.Sprintf("/api/v1/events?after=%d&limit=1000", after), nil, &evs); err != nil {
				return err
			}
			for _, e := range evs {
				if err := print(e); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow new events (Server-Sent Events)")
	cmd.Flags().Int64Var(&after, "after", 0, "start after this event seq")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}

func compactData(d json.RawMessage) string {
	s := string(d)
	if s == "{}" || s == "null" {
		return ""
	}
	return s
}
