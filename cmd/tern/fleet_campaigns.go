package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tern-iot/tern/internal/server"
	"github.com/tern-iot/tern/internal/store"
)

func fleetCampaignsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "campaign", Aliases: []string{"campaigns"}, Short: "Campaigns: roll a release out in phases, stopping by itself on failures"}
	var asJSON bool
	var req struct {
		release, group, selector, wait, success, maxFailures, timeout string
		phases                                                        []string
	}
	create := &cobra.Command{
		Use:   "create NAME --release R (--group G | --selector k=v,...) [--phases 10%,50%,100%] [--wait 1m] [--success 95%] [--max-failures 10%]",
		Short: "Start a campaign",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v server.CampaignView
			body := map[string]any{"name": args[0], "release": req.release, "group": req.group, "selector": req.selector, "phases": req.phases,
				"wait": req.wait, "success": req.success, "max_failures": req.maxFailures, "phase_timeout": req.timeout}
			if err := call("POST", "/api/v1/campaigns", body, &v); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, v, func(tw *tabwriter.Writer) { writeCampaign(tw, v, false) })
		},
	}
	f := create.Flags()
	f.StringVar(&req.release, "release", "", "release to roll out (name or id)")
	f.StringVar(&req.group, "group", "", "target group (name or id)")
	f.StringVar(&req.selector, "selector", "", "target label selector, e.g. env=prod,region=eu")
	f.StringSliceVar(&req.phases, "phases", nil, "cumulative phases: percentages or device counts (default 100%)")
	f.StringVar(&req.wait, "wait", "", "wait between a phase's success and the next phase, e.g. 10m")
	f.StringVar(&req.success, "success", "", "share of a phase's devices that must apply to move on (default 100%)")
	f.StringVar(&req.maxFailures, "max-failures", "", "pause when failures exceed this: a % of the phase or a device count (default 0: the first failure)")
	f.StringVar(&req.timeout, "phase-timeout", "", "a phase not done in this time pauses; its silent devices count as failed")
	create.MarkFlagRequired("release")

	ls := &cobra.Command{
		Use: "ls", Short: "List campaigns", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cs []server.CampaignView
			if err := call("GET", "/api/v1/campaigns", nil, &cs); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, cs, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tID\tRELEASE\tSTATE\tPHASE\tAPPLIED\tFAILED\tPENDING\tCREATED")
				for _, c := range cs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%d/%d\t%d\t%d\t%s\n", c.Name, c.ID, c.ReleaseName, c.State, c.Phase+1, len(c.Phases),
						c.Totals.Applied, c.Totals.Devices, c.Totals.Failed, c.Totals.Pending+c.Totals.InProgress, ago(c.CreatedAt))
				}
			})
		},
	}
	var watch bool
	show := &cobra.Command{
		Use:   "show NAME|ID [--watch]",
		Short: "Show a campaign's progress per phase and per device; --watch follows it live",
		Long: "With --watch, the progress bars follow the campaign until it stops by itself: the exit status is 0 when it\n" +
			"completed, 2 when it paused (a threshold, a timeout or an operator) or was cancelled or rolled back.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if watch {
				return watchCampaign(cmd, args[0], asJSON)
			}
			v, err := getCampaign(args[0])
			if err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, v, func(tw *tabwriter.Writer) { writeCampaign(tw, v, true) })
		},
	}
	show.Flags().BoolVarP(&watch, "watch", "w", false, "follow the campaign live until it completes or stops")
	cmd.AddCommand(create, ls, show)
	for _, a := range []struct{ verb, short string }{
		{"pause", "Pause a running campaign: nothing new is assigned"},
		{"resume", "Resume a paused campaign; its failures so far are acknowledged"},
		{"cancel", "Cancel a campaign: devices not yet assigned never will be"},
		{"rollback", "Give the campaign's devices what they ran before it"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use: a.verb + " NAME|ID", Short: a.short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				var v server.CampaignView
				if err := call("POST", "/api/v1/campaigns/"+url.PathEscape(args[0])+"/"+a.verb, nil, &v); err != nil {
					return err
				}
				return output(cmd.OutOrStdout(), asJSON, v, func(tw *tabwriter.Writer) { writeCampaign(tw, v, false) })
			},
		})
	}
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func getCampaign(id string) (server.CampaignView, error) {
	var v server.CampaignView
	err := call("GET", "/api/v1/campaigns/"+url.PathEscape(id), nil, &v)
	return v, err
}

// writeCampaign prints a campaign: its settings, a bar per phase and, with
// devices, a line per device that is not simply done.
func writeCampaign(tw *tabwriter.Writer, v server.CampaignView, devices bool) {
	s := v.Spec
	state := v.State
	if v.Reason != "" {
		state += ": " + v.Reason
	}
	fmt.Fprintf(tw, "campaign %s (%s)\n", v.Name, v.ID)
	fmt.Fprintf(tw, "  release %s to %s, %d device(s)\n", v.ReleaseName, v.Target, v.Totals.Devices+v.Totals.Skipped)
	rule := fmt.Sprintf("  success %s per phase, pause over %s failures", s.Success, s.MaxFailures)
	if s.Wait > 0 {
		rule += fmt.Sprintf(", wait %s between phases", time.Duration(s.Wait))
	}
	if s.PhaseTimeout > 0 {
		rule += fmt.Sprintf(", phase timeout %s", time.Duration(s.PhaseTimeout))
	}
	fmt.Fprintln(tw, rule)
	fmt.Fprintf(tw, "  state %s\n", state)
	tw.Flush()
	for i, p := range v.Phases {
		mark := " "
		if i == v.Phase && v.State == store.CampaignRunning {
			mark = ">"
		}
		fmt.Fprintf(tw, "%s %s\t%s\n", mark, phaseBar(p), phaseCounts(p))
	}
	if !devices {
		return
	}
	fmt.Fprintln(tw, "\n  DEVICE\tPHASE\tSTATE\tPREVIOUS\tMESSAGE")
	for _, d := range v.Devices {
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\n", d.DeviceID, d.Phase+1, d.State, orDash(d.PrevRelease), orDash(oneLine(d.Message)))
	}
}

// phaseBar renders one phase's applied devices as a progress bar.
func phaseBar(p store.PhaseProgress) string {
	bar := progressbar.NewOptions(max(p.Devices, 1), progressbar.OptionSetWriter(io.Discard), progressbar.OptionSetWidth(24),
		progressbar.OptionShowCount(), progressbar.OptionSetElapsedTime(false), progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetRenderBlankState(true), progressbar.OptionSetTheme(progressbar.Theme{Saucer: "#", SaucerPadding: ".",
			BarStart: "[", BarEnd: "]"}))
	bar.Set(min(p.Applied+p.Reverted, max(p.Devices, 1)))
	return fmt.Sprintf("%-15s %s", fmt.Sprintf("phase %d (%s)", p.Phase, p.Amount), strings.TrimSpace(strings.ReplaceAll(bar.String(), "\r", "")))
}

func phaseCounts(p store.PhaseProgress) string {
	parts := []string{fmt.Sprintf("%d applied", p.Applied)}
	for _, c := range []struct {
		n    int
		name string
	}{{p.Failed, "failed"}, {p.InProgress, "in progress"}, {p.Pending, "pending"}, {p.Waiting, "waiting"}, {p.Skipped, "skipped"},
		{p.Reverting, "reverting"}, {p.Reverted, "reverted"}, {p.RevertFail, "revert failed"}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.name))
		}
	}
	return strings.Join(parts, ", ")
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

// settled reports whether a campaign changes no more by itself.
func settled(v server.CampaignView) bool {
	switch v.State {
	case store.CampaignRunning:
		return false
	case store.CampaignRolledBack:
		return v.Totals.Reverting == 0
	}
	return true
}

// watchCampaign redraws the campaign on each of its events (the server's event
// stream) and every two seconds, until it settles.
func watchCampaign(cmd *cobra.Command, id string, asJSON bool) error {
	c, err := fleetClient()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	v, err := getCampaign(id)
	if err != nil {
		return err
	}
	changed := make(chan struct{}, 1)
	go c.Follow(ctx, -1, func(raw json.RawMessage) error {
		var e struct {
			Data struct {
				Campaign string `json:"campaign"`
			} `json:"data"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Data.Campaign == v.ID {
			select {
			case changed <- struct{}{}:
			default:
			}
		}
		return nil
	})
	out := cmd.OutOrStdout()
	f, isFile := out.(*os.File)
	redraw := isFile && term.IsTerminal(int(f.Fd())) && !asJSON
	lines := 0
	last := ""
	for {
		var buf strings.Builder
		if asJSON {
			data, _ := json.Marshal(v)
			buf.Write(append(data, '\n'))
		} else {
			tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
			writeCampaign(tw, v, false)
			tw.Flush()
		}
		if text := buf.String(); text != last {
			if redraw && lines > 0 {
				fmt.Fprintf(out, "\x1b[%dA\x1b[J", lines)
			} else if lines > 0 && !asJSON {
				fmt.Fprintln(out)
			}
			fmt.Fprint(out, text)
			lines, last = strings.Count(text, "\n"), text
		}
		if settled(v) {
			if v.State == store.CampaignCompleted {
				return nil
			}
			return &exitError{code: 2, err: fmt.Errorf("campaign %s is %s", v.Name, v.State)}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(2 * time.Second):
		}
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		var next server.CampaignView // fresh: decoding over v would keep counts the answer omits
		err := c.Do(qctx, "GET", "/api/v1/campaigns/"+url.PathEscape(v.ID), nil, &next)
		cancel()
		switch {
		case err == nil:
			v = next
		case errors.Is(err, context.Canceled):
		default:
			return err
		}
	}
}
