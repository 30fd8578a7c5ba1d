package main

import (
	"fmt"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tern-iot/tern/internal/store"
)

func fleetGroupsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "groups", Aliases: []string{"group"}, Short: "Device groups: static members or a label selector"}
	var asJSON bool
	var selector string
	var members []string
	create := &cobra.Command{
		Use: "create NAME (--selector SEL | --member ID...)", Short: "Create a group", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var g store.Group
			if err := call("POST", "/api/v1/groups", map[string]any{"name": args[0], "selector": selector, "members": members}, &g); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, g, func(tw *tabwriter.Writer) { fmt.Fprintf(tw, "created group %s (%s)\n", g.Name, g.ID) })
		},
	}
	create.Flags().StringVar(&selector, "selector", "", "dynamic group: devices whose labels match")
	create.Flags().StringSliceVar(&members, "member", nil, "static group: device ids (repeatable)")
	ls := &cobra.Command{
		Use: "ls", Short: "List groups", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var gs []store.Group
			if err := call("GET", "/api/v1/groups", nil, &gs); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, gs, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tID\tSELECTOR")
				for _, g := range gs {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", g.Name, g.ID, orDash(g.Selector))
				}
			})
		},
	}
	show := &cobra.Command{
		Use: "show NAME|ID", Short: "Show a group and its devices", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var g struct {
				store.Group
				Devices []store.Device `json:"devices"`
			}
			if err := call("GET", "/api/v1/groups/"+url.PathEscape(args[0]), nil, &g); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, g, func(tw *tabwriter.Writer) {
				kind := "static"
				if g.Selector != "" {
					kind = "selector " + g.Selector
				}
				fmt.Fprintf(tw, "%s (%s): %s, %d device(s)\n", g.Name, g.ID, kind, len(g.Devices))
				for _, d := range g.Devices {
					fmt.Fprintf(tw, "  %s\t%s\t%s\n", d.ID, presence(d), labelString(d.Labels))
				}
			})
		},
	}
	set := &cobra.Command{
		Use: "set-members NAME|ID ID...", Short: "Replace a static group's members", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call("PUT", "/api/v1/groups/"+url.PathEscape(args[0])+"/members", map[string]any{"members": nonNilSlice(args[1:])}, nil)
		},
	}
	del := &cobra.Command{
		Use: "delete NAME|ID", Short: "Delete a group (its devices stay)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call("DELETE", "/api/v1/groups/"+url.PathEscape(args[0]), nil, nil)
		},
	}
	cmd.AddCommand(create, ls, show, set, del)
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func nonNilSlice(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func fleetWebhooksCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "webhooks", Aliases: []string{"webhook"}, Short: "Webhooks: signed HTTP deliveries of events"}
	var asJSON bool
	var secret string
	var events []string
	create := &cobra.Command{
		Use: "create URL --secret SECRET [--event TYPE]...", Short: "Create a webhook", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var w store.Webhook
			if err := call("POST", "/api/v1/webhooks", map[string]any{"url": args[0], "secret": secret, "events": nonNilSlice(events)}, &w); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, w, func(tw *tabwriter.Writer) { fmt.Fprintf(tw, "created webhook %s\n", w.ID) })
		},
	}
	create.Flags().StringVar(&secret, "secret", "", "HMAC-SHA256 signing secret (16+ characters)")
	create.Flags().StringSliceVar(&events, "event", nil, "event types to deliver (default all)")
	create.MarkFlagRequired("secret")
	ls := &cobra.Command{
		Use: "ls", Short: "List webhooks", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ws []store.Webhook
			if err := call("GET", "/api/v1/webhooks", nil, &ws); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, ws, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tURL\tEVENTS")
				for _, w := range ws {
					ev := strings.Join(w.Events, ",")
					fmt.Fprintf(tw, "%s\t%s\t%s\n", w.ID, w.URL, orDash(ev))
				}
			})
		},
	}
	deliveries := &cobra.Command{
		Use: "deliveries ID", Short: "A webhook's delivery log", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ds []store.Delivery
			if err := call("GET", "/api/v1/webhooks/"+url.PathEscape(args[0])+"/deliveries", nil, &ds); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, ds, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tEVENT\tSTATUS\tATTEMPTS\tCODE\tERROR")
				for _, d := range ds {
					fmt.Fprintf(tw, "%d\t%d\t%s\t%d\t%d\t%s\n", d.ID, d.EventSeq, d.Status, d.Attempts, d.LastCode, orDash(d.LastError))
				}
			})
		},
	}
	del := &cobra.Command{
		Use: "delete ID", Short: "Delete a webhook", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call("DELETE", "/api/v1/webhooks/"+url.PathEscape(args[0]), nil, nil)
		},
	}
	cmd.AddCommand(create, ls, deliveries, del)
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func fleetAccountsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "accounts", Aliases: []string{"account"}, Short: "Accounts (admins of the default account)"}
	var asJSON bool
	create := &cobra.Command{
		Use: "create NAME", Short: "Create an account; prints its first admin key once", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				Account  struct{ ID, Name string } `json:"account"`
				AdminKey string                    `json:"admin_key"`
			}
			if err := call("POST", "/api/v1/accounts", map[string]any{"name": args[0]}, &out); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, out, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "account %s (%s)\nadmin key (shown once): %s\n", out.Account.Name, out.Account.ID, out.AdminKey)
			})
		},
	}
	ls := &cobra.Command{
		Use: "ls", Short: "List accounts", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var as []struct {
				ID, Name string
			}
			if err := call("GET", "/api/v1/accounts", nil, &as); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, as, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tID")
				for _, a := range as {
					fmt.Fprintf(tw, "%s\t%s\n", a.Name, a.ID)
				}
			})
		},
	}
	cmd.AddCommand(create, ls)
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// fleetPolicyCmd shows and sets the account's policy for its devices.
func fleetPolicyCmd() *cobra.Command {
	var asJSON bool
	type view struct {
		Name   string `json:"name"`
		Policy struct {
			DevMode string `json:"devmode"`
		} `json:"policy"`
	}
	show := func(cmd *cobra.Command, a view) error {
		return output(cmd.OutOrStdout(), asJSON, a.Policy, func(tw *tabwriter.Writer) {
			fmt.Fprintf(tw, "account\t%s\ndevmode\t%s\n", a.Name, a.Policy.DevMode)
		})
	}
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Show the account's policy for its devices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var a view
			if err := call("GET", "/api/v1/account", nil, &a); err != nil {
				return err
			}
			return show(cmd, a)
		},
	}
	devmode := &cobra.Command{
		Use:   "devmode allow|deny",
		Short: "Allow or refuse developer mode on every device of the account (admin)",
		Long: "deny: every device of the account receives the policy in its signed desired state,\n" +
			"turns developer mode off (closing its LAN API) and refuses `tern device dev enable`\n" +
			"until the policy is allow again. Devices offline receive it when they reconnect.",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"allow", "deny"},
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "allow" && args[0] != "deny" {
				return fmt.Errorf("devmode: %q: want allow or deny", args[0])
			}
			var a view
			if err := call("PUT", "/api/v1/account/policy", map[string]string{"devmode": args[0]}, &a); err != nil {
				return err
			}
			return show(cmd, a)
		},
	}
	cmd.AddCommand(devmode)
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
