package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tern-iot/tern/internal/store"
)

func fleetLogsCmd() *cobra.Command {
	var app, since string
	var follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "logs DEVICE [--app NAME] [--since 1h] [-f]",
		Short: "Show a device's logs (its apps' and its agent's, \"ternd\"), as the server received them",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := fleetClient()
			if err != nil {
				return err
			}
			q := url.Values{}
			if app != "" {
				q.Set("app", app)
			}
			if since != "" {
				q.Set("since", since)
			}
			if follow {
				q.Set("follow", "1")
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			w := cmd.OutOrStdout()
			return c.Lines(ctx, "/api/v1/devices/"+url.PathEscape(args[0])+"/logs?"+q.Encode(), func(raw json.RawMessage) error {
				if asJSON {
					_, err := fmt.Fprintf(w, "%s\n", raw)
					return err
				}
				var l store.LogLine
				if err := json.Unmarshal(raw, &l); err != nil {
					return err
				}
				level := ""
				if l.Level != "" {
					level = " " + l.Level
				}
				_, err := fmt.Fprintf(w, "%s %s %s%s %s\n", l.Time.Local().Format("2006-01-02T15:04:05.000"), l.App, l.Stream, level, l.Line)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "only this app's lines (ternd: the agent's own)")
	cmd.Flags().StringVar(&since, "since", "", "only lines since this time (RFC 3339) or this long ago (1h)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow new lines")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}
