package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tern-iot/tern/internal/store"
)

func presence(d store.Device) string {
	if d.Status != store.StatusActive {
		return string(d.Status)
	}
	if d.Online {
		return "online"
	}
	return "offline"
}

func fleetDevicesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "devices", Aliases: []string{"device"}, Short: "List, show, label and decommission devices"}
	var asJSON bool
	var selector, status, text string
	ls := &cobra.Command{
		Use: "ls [--selector SEL] [--status S] [-q TEXT]", Short: "List devices", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for k, v := range map[string]string{"selector": selector, "status": status, "q": text} {
				if v != "" {
					q.Set(k, v)
				}
			}
			var ds []store.Device
			if err := call("GET", "/api/v1/devices?"+q.Encode(), nil, &ds); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, ds, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tSTATUS\tLAST SEEN\tLABELS")
				for _, d := range ds {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.ID, presence(d), ago(d.LastSeen), labelString(d.Labels))
				}
			})
		},
	}
	ls.Flags().StringVar(&selector, "selector", "", "label selector: env=prod,region!=eu,gpu,!legacy")
	ls.Flags().StringVar(&status, "status", "", "online, offline, pending, active, rejected or decommissioned")
	ls.Flags().StringVarP(&text, "query", "q", "", "text in the id or a label value")

	show := &cobra.Command{
		Use: "show ID", Short: "Show a device: status, labels, inventory, connections", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var d struct {
				store.Device
				Connections []store.Connection `json:"connections"`
			}
			if err := call("GET", "/api/v1/devices/"+url.PathEscape(args[0]), nil, &d); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, d, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "ID:\t%s\n", d.ID)
				fmt.Fprintf(tw, "Status:\t%s\n", presence(d.Device))
				fmt.Fprintf(tw, "Last seen:\t%s\n", ago(d.LastSeen))
				fmt.Fprintf(tw, "Labels:\t%s\n", labelString(d.Labels))
				fmt.Fprintf(tw, "Certificate:\tserial %s, expires %s\n", orDash(d.CertSerial), d.CertNotAfter.Format("2006-01-02"))
				var rep struct {
					AgentVersion string `json:"agent_version"`
					OS           string `json:"os"`
					Arch         string `json:"arch"`
					Apps         []struct {
						Name, Version, State, Health string
					} `json:"apps"`
					Update struct {
						Desired uint64 `json:"desired_version"`
						OS      *struct {
							Version string `json:"version"`
							Booted  string `json:"booted_slot"`
							Update  string `json:"update"`
						} `json:"os"`
						DevMode *struct {
							Enabled  bool `json:"enabled"`
							Pairings int  `json:"pairings"`
							Denied   bool `json:"denied"`
						} `json:"devmode"`
					} `json:"update"`
				}
				if len(d.Reported) > 0 {
					json.Unmarshal(d.Reported, &rep)
					fmt.Fprintf(tw, "Agent:\t%s on %s (%s), reported %s\n", rep.AgentVersion, rep.OS, rep.Arch, ago(d.ReportedAt))
					if o := rep.Update.OS; o != nil {
						fmt.Fprintf(tw, "OS:\t%s on slot %s %s\n", orDash(o.Version), o.Booted, o.Update)
					}
					if dm := rep.Update.DevMode; dm != nil && dm.Enabled {
						fmt.Fprintf(tw, "Developer mode:\tON (%d paired workstation(s))\n", dm.Pairings)
					} else if dm != nil && dm.Denied {
						fmt.Fprintf(tw, "Developer mode:\toff (refused by the account's policy)\n")
					} else if dm != nil {
						fmt.Fprintf(tw, "Developer mode:\toff\n")
					}
					if rep.Update.Desired > 0 {
						fmt.Fprintf(tw, "Desired state:\tversion %d\n", rep.Update.Desired)
					}
					fmt.Fprintf(tw, "Apps:\t%d\n", len(rep.Apps))
					for _, a := range rep.Apps {
						fmt.Fprintf(tw, "  %s\t%s  %s %s\n", a.Name, a.Version, a.State, a.Health)
					}
				}
				fmt.Fprintln(tw, "Connections:")
				for _, c := range d.Connections {
					off := "connected"
					if !c.DisconnectedAt.IsZero() {
						off = "until " + c.DisconnectedAt.Local().Format("2006-01-02 15:04:05")
					}
					fmt.Fprintf(tw, "  %s\t%s from %s\n", c.ConnectedAt.Local().Format("2006-01-02 15:04:05"), off, c.RemoteAddr)
				}
			})
		},
	}
	label := &cobra.Command{
		Use: "label ID KEY=VALUE... | KEY-...", Short: "Set labels (KEY- removes one)", Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			changes := map[string]string{}
			for _, a := range args[1:] {
				if k, ok := strings.CutSuffix(a, "-"); ok && !strings.Contains(a, "=") {
					changes[k] = ""
				} else if k, v, ok := strings.Cut(a, "="); ok && v != "" {
					changes[k] = v
				} else {
					return fmt.Errorf("%q: want KEY=VALUE or KEY-", a)
				}
			}
			var d store.Device
			if err := call("PATCH", "/api/v1/devices/"+url.PathEscape(args[0])+"/labels", map[string]any{"labels": changes}, &d); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, d, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "%s\t%s\n", d.ID, labelString(d.Labels))
			})
		},
	}
	verb := func(name, short string) *cobra.Command {
		return &cobra.Command{
			Use: name + " ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				var d store.Device
				if err := call("POST", "/api/v1/devices/"+url.PathEscape(args[0])+"/"+name, nil, &d); err != nil {
					return err
				}
				return output(cmd.OutOrStdout(), asJSON, d, func(tw *tabwriter.Writer) {
					fmt.Fprintf(tw, "%s\t%s\n", d.ID, d.Status)
				})
			},
		}
	}
	cmd.AddCommand(ls, show, label,
		verb("decommission", "Revoke a device's certificate for good and disconnect it"),
		verb("accept", "Accept a device waiting for manual approval"),
		verb("reject", "Reject a device waiting for manual approval"))
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
