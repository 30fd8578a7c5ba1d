package harness

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func secs(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	if d < 10*time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// Table renders the report for people.
func (r *Report) Table() string {
	var b strings.Builder
	row := func(k, format string, args ...any) { fmt.Fprintf(&b, "  %-22s %s\n", k, fmt.Sprintf(format, args...)) }
	fmt.Fprintf(&b, "fleetsim: %d devices, %s, %d worker process(es); %d CPUs, load %s -> %s; took %s\n",
		r.Devices, r.DB, r.Procs, r.CPUs, first(r.Load), lastOf(r.Load), r.Took.Round(time.Second))
	if r.Command != "" {
		fmt.Fprintf(&b, "  command: %s\n", r.Command)
	}
	if r.EnrollTime > 0 {
		row("enrollment", "%s for %d = %.0f/s (%d in flight); server CPU %.2f ms each%s", secs(r.EnrollTime), r.Devices, r.EnrollRate,
			r.EnrollConcurrent, perEach(r.EnrollServerCPU, r.Devices), dbPart(r.DB, r.EnrollDBCPU, r.Devices))
	}
	if r.StormOnlineN > 0 {
		how := "all at once"
		if r.ConnectRate > 0 {
			how = fmt.Sprintf("%.0f/s", r.ConnectRate)
		}
		row("connect storm", "%s: all online in %s, all reported in %s; server CPU %s = %.2f ms per device%s", how,
			secs(r.StormOnline), secs(r.StormReported), secs(r.StormServerCPU), perEach(r.StormServerCPU, r.Devices), dbPart(r.DB, r.StormDBCPU, r.Devices))
	}
	if r.HaveServer && r.RSSConnected > 0 {
		row("server RSS", "%s idle, %s enrolled, %s connected: %.1f KiB per connected device", mib(r.RSSIdle), mib(r.RSSEnrolled),
			mib(r.RSSConnected), float64(r.PerDeviceBytes)/1024)
		idle := fmt.Sprintf("%.1f%% of a core = %.2f%% per 1,000 devices", r.IdleCPU*100, r.IdleCPU*100*1000/float64(r.Devices))
		if r.DB == "postgres" {
			idle += fmt.Sprintf("; PostgreSQL %.1f%% (PSS %s)", r.IdleDBCPU*100, mib(r.DBPSS))
		}
		row("idle", "%s over %s (keepalive %ds only); %d descriptors", idle, r.IdleWindow, r.KeepAlive, r.FDsConnected)
		if r.BurstReports > 0 {
			row("report burst", "%d reported-state changes stored in %s (%.0f/s, spread over the devices' report ticks): %.2f ms CPU per report above idle%s",
				r.BurstReports, secs(r.BurstTime), float64(r.BurstReports)/r.BurstTime.Seconds(), float64(r.PerReportCPU)/1e6,
				map[bool]string{true: " (server + PostgreSQL)", false: ""}[r.DB == "postgres"])
		}
		if r.BeatRate > 0 {
			beat := fmt.Sprintf("%.1f%% of a core", r.BeatCPU*100)
			if r.DB == "postgres" {
				beat += fmt.Sprintf(" + PostgreSQL %.1f%%", r.BeatDBCPU*100)
			}
			row("idle + heartbeats", "%s with %.1f reports/s (each device every %s)", beat, r.BeatRate, r.Heartbeat)
		}
	}
	if r.Probe.N > 0 {
		row("event -> SSE (idle)", "%s", r.Probe)
		row("  device -> server", "%s", r.ProbeIn)
		row("  server -> new stream", "%s", r.ProbeFresh)
	}
	if c := r.Campaign; c != nil {
		row("campaign", "%d phases (%s), %.0f KiB package, download %s, fail rate %.1f%%: %s in %s; every device reached in %s",
			len(c.Phases), strings.Join(c.Phases, ","), float64(c.PackageBytes)/1024, c.DownloadTime, c.FailRate*100, c.State, secs(c.Ended), secs(c.Reached))
		for i, p := range c.PhaseTimes {
			row(fmt.Sprintf("  phase %d", i+1), "started +%s, completed +%s", secs(p.Started), secs(p.Completed))
		}
		var outs []string
		for k, v := range c.Outcomes {
			outs = append(outs, fmt.Sprintf("%s %d", k, v))
		}
		sort.Strings(outs)
		row("  outcomes", "%s", strings.Join(outs, ", "))
		row("  event -> SSE", "%s", c.Latency)
		if r.HaveServer {
			row("  server", "CPU %s%s, peak RSS %s, peak descriptors %d", secs(c.ServerCPU), dbPart(r.DB, c.DBCPU, 0), mib(c.PeakRSS), c.PeakFDs)
		}
		if c.Reason != "" {
			row("  reason", "%s", c.Reason)
		}
	}
	if r.Brokers != "" {
		row("brokers", "%s", r.Brokers)
		row("  brokers' cost", "RSS %s connected (%.1f KiB per device), at most %d descriptors in one; CPU: storm %s, idle %.1f%% of a core, campaign %s",
			mib(r.BrokerRSS), float64(r.BrokerRSS)/1024/float64(max(r.Devices, 1)), r.BrokerFDs, secs(r.BrokerStormCPU), r.BrokerIdleCPU*100, secs(r.BrokerCampaignCPU))
	}
	if r.SimRSS > 0 {
		row("simulator", "RSS %s (%.0f KiB per device), CPU %s", mib(r.SimRSS), float64(r.SimRSS)/1024/float64(r.Devices), secs(r.SimCPU))
	}
	if r.ServerExitError != "" {
		row("SERVER EXITED", "%s (log %s)", r.ServerExitError, r.ServerLog)
	}
	for _, n := range r.Notes {
		row("note", "%s", n)
	}
	return b.String()
}

func first(s []string) string {
	if len(s) == 0 {
		return "?"
	}
	return s[0]
}

func lastOf(s []string) string {
	if len(s) == 0 {
		return "?"
	}
	return s[len(s)-1]
}

func perEach(d time.Duration, n int) float64 {
	if n == 0 {
		return 0
	}
	return float64(d) / 1e6 / float64(n)
}

func dbPart(db string, cpu time.Duration, n int) string {
	if db != "postgres" {
		return ""
	}
	if n == 0 {
		return fmt.Sprintf(" (+ PostgreSQL %s)", secs(cpu))
	}
	return fmt.Sprintf(" (+ PostgreSQL %.2f ms)", perEach(cpu, n))
}

func durOrNone(d time.Duration) string {
	if d == 0 {
		return "none"
	}
	return d.String()
}
