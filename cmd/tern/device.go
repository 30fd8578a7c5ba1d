package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tern-iot/tern/internal/agent"
)

func deviceCmd() *cobra.Command {
	var device string
	var asJSON bool
	cmd := &cobra.Command{Use: "device", Short: "Talk to one device's ternd"}
	cmd.PersistentFlags().StringVar(&device, "device", "unix://"+agent.DefaultSocket, "device address: unix:///path/to/ternd.sock")
	client := func() (*agent.Client, error) { return agent.NewClient(device) }
	printJSON := func(w io.Writer, v any) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}

	install := &cobra.Command{
		Use:   "install APP.tern [APP2.tern ...]",
		Short: "Install or update apps from signed packages (several: one all-or-nothing update)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			var readers []io.Reader
			for _, p := range args {
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				defer f.Close()
				readers = append(readers, f)
			}
			list, err := c.Install(cmd.Context(), readers...)
			if err != nil {
				return fmt.Errorf("install %s: %w", strings.Join(args, " "), err)
			}
			for _, st := range list {
				fmt.Fprintf(cmd.OutOrStdout(), "installed %s %s: %s\n", st.Name, st.Version, stateText(st))
			}
			return nil
		},
	}
	rollback := &cobra.Command{
		Use: "rollback NAME", Short: "Return an app to its previous version (N-1)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			list, err := c.Rollback(cmd.Context(), args[0])
			if err != nil {
				return fmt.Errorf("rollback %s: %w", args[0], err)
			}
			for _, st := range list {
				fmt.Fprintf(cmd.OutOrStdout(), "rolled back %s to %s: %s\n", st.Name, st.Version, stateText(st))
			}
			return nil
		},
	}
	events := &cobra.Command{
		Use: "events [--json]", Short: "Show the device's events: update transitions, installs, removals", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			list, err := c.Events(cmd.Context(), 0)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tKIND\tAPP\tTRANSITION\tMESSAGE")
			for _, e := range list {
				tr := "-"
				if e.From != "" || e.To != "" {
					tr = dash(e.From) + " -> " + e.To
				}
				app := e.App
				if e.Version != "" {
					app += " " + e.Version
				}
				if e.State != "" { // a desired-state report
					tr = e.State
					if e.DesiredVersion != 0 {
						app = fmt.Sprintf("desired v%d", e.DesiredVersion)
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02T15:04:05"), e.Kind, app, tr, e.Message)
			}
			return tw.Flush()
		},
	}
	ps := &cobra.Command{
		Use: "ps", Short: "List apps and their state", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			list, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tSTATE\tHEALTH\tPID\tUPTIME\tRESTARTS\tLAST EXIT\tUPDATE")
			for _, s := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Name, s.Version, stateText(s), dash(s.Health),
					dashInt(s.Pid), uptime(s), s.Restarts, exitText(s.LastExit), dash(s.Update))
			}
			return tw.Flush()
		},
	}
	inspect := &cobra.Command{
		Use: "inspect NAME", Short: "Show an app's state and signed manifest", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			st, err := c.Inspect(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), st)
			}
			w := cmd.OutOrStdout()
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "Name:\t%s\nVersion:\t%s\nState:\t%s (desired %s)\n", st.Name, st.Version, stateText(st), st.Desired)
			if st.Pid != 0 {
				fmt.Fprintf(tw, "Pid:\t%d\nUptime:\t%s\n", st.Pid, uptime(st))
			}
			if st.Health != "" {
				fmt.Fprintf(tw, "Health:\t%s %s\n", st.Health, st.HealthError)
			}
			fmt.Fprintf(tw, "Restarts:\t%d\nLast exit:\t%s\nInstalled:\t%s\nPrevious:\t%s\nUpdate:\t%s\n", st.Restarts, exitText(st.LastExit),
				st.InstalledAt.Format(time.RFC3339), dash(st.Previous), dash(st.Update))
			if m := st.Manifest; m != nil {
				fmt.Fprintf(tw, "Command:\t%s\nRestart:\t%s\nNetwork:\t%s\n", strings.Join(m.App.Command, " "), m.App.Restart, m.App.Capabilities.Network.EffectiveMode())
				fmt.Fprintf(tw, "Layers:\t%d\n", len(m.Image.Layers))
			}
			return tw.Flush()
		},
	}
	var tail int
	var follow bool
	logs := &cobra.Command{
		Use: "logs NAME [-f] [--tail N]", Short: "Show an app's logs", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return c.Logs(cmd.Context(), args[0], tail, follow, func(l agent.LogLine) error {
				if asJSON {
					return json.NewEncoder(out).Encode(l)
				}
				_, err := fmt.Fprintf(out, "%s %s %s\n", l.Time.Local().Format("2006-01-02T15:04:05.000"), l.Stream, l.Line)
				return err
			})
		},
	}
	logs.Flags().IntVarP(&tail, "tail", "n", -1, "show only the last N lines")
	logs.Flags().BoolVarP(&follow, "follow", "f", false, "follow new lines")

	for _, verb := range []string{"start", "stop", "restart"} {
		cmd.AddCommand(&cobra.Command{
			Use: verb + " NAME", Short: strings.ToUpper(verb[:1]) + verb[1:] + " an app", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := client()
				if err != nil {
					return err
				}
				st, err := c.Verb(cmd.Context(), args[0], verb)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", st.Name, stateText(st))
				return nil
			},
		})
	}
	remove := &cobra.Command{
		Use: "remove NAME", Short: "Stop and delete an app with its data", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			if err := c.Remove(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
			return nil
		},
	}
	for _, c := range []*cobra.Command{ps, inspect, logs, events} {
		c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	}
	cmd.AddCommand(install, ps, inspect, logs, remove, rollback, events)
	cmd.AddCommand(deviceOSCmd(client, &asJSON))
	addDevCommands(cmd, &device)
	return cmd
}

func stateText(s agent.AppStatus) string {
	if s.State == agent.StateBackoff && !s.NextStart.IsZero() {
		return fmt.Sprintf("backoff (restart in %s)", time.Until(s.NextStart).Round(time.Second))
	}
	return s.State
}

func uptime(s agent.AppStatus) string {
	if s.StartedAt.IsZero() || s.State != agent.StateRunning {
		return "-"
	}
	return time.Since(s.StartedAt).Round(time.Second).String()
}

func exitText(e *agent.ExitInfo) string {
	if e == nil {
		return "-"
	}
	var parts []string
	switch {
	case e.Lost:
		parts = append(parts, "lost")
	case e.Signal != 0:
		parts = append(parts, fmt.Sprintf("signal %d", e.Signal))
	default:
		parts = append(parts, fmt.Sprintf("code %d", e.Code))
	}
	if e.OOMKilled {
		parts = append(parts, "OOM-killed")
	}
	if e.Error != "" {
		parts = append(parts, e.Error)
	}
	return strings.Join(parts, ", ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func dashInt(n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}
