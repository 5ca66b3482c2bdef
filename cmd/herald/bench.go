package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/heraldmesh/herald/cmd/herald/internal/bench"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func benchCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure Herald on this machine",
	}
	cmd.AddCommand(benchPublishCommand(), benchWebhooksCommand(), benchFanoutCommand(), benchUsageCommand(), benchBridgeCommand(), benchLoaderCommand(), benchFailoverCommand())
	return cmd
}

func benchPublishCommand() *cobra.Command {
	var o bench.Options
	var natsServer string
	var asJSON, noLatency bool
	var cluster []int
	var types, routers int
	cmd := &cobra.Command{
		Use:   "publish",
		Short: "Events/s and latency of Publish (single and batched) against raw XADD and NATS JetStream",
		Long: `Measures Herald's write path in one run, with the same payloads everywhere:

  herald-single  gRPC Publish, one event per call (auth, schema validation, dedupe, XADD)
  herald-batch   gRPC Publish, --batch events per call
  xadd-single    raw XADD of the same log entries to the same Redis, one per call
  xadd-batch     raw XADD in pipelines of --batch
  nats-js-async  NATS JetStream PublishAsync (file storage, Nats-Msg-Id dedupe),
                 batch x concurrency messages in flight, waiting for every ack
  nats-js-sync   NATS JetStream Publish, one per call, --concurrency callers
  herald-single-cN  (--callers N,...) herald-single with N concurrent callers
                 (sharing one gRPC connection per 128 callers)
  latency        one event per call at --latency-rate for --latency-duration,
                 timed from the start of the publish call to its arrival at
                 one SSE client of the edge (started for this phase only)

It starts everything it measures, bound to 127.0.0.1, and stops it at the end:
a redis-server in a temporary directory (AOF, appendfsync --redis-fsync), the
registry in this process, the router as its own process (the router binary of
'make build', next to this executable or on PATH) so that its CPU time and peak
RSS are read from /proc, and a nats-server with JetStream on a free port with
its store in a temporary directory; for the latency phase, the edge binary of
'make build' as its own process. It reports events/s, p50/p99 latency per
call (per batch for batched phases), the router's CPU and peak RSS, Redis' and
nats-server's CPU, and the targets of issue 13 as ratios of this run; then
checks that the log holds each acknowledged event once, that a re-published
batch is answered duplicate=true and that the SSE client got every event of
the latency phase once.

With --cluster N[,N...] it measures instead, for each N in one run, the
Herald phases herald-batch and herald-single and a raw xadd-batch baseline
against a local Redis Cluster of N masters (no replicas, AOF with appendfsync
always), with --types event types whose streams spread evenly over the
masters by slot, published in turn; --routers K router processes share the
callers. It reports events/s per N, the CPU of the routers, of every Redis
node and of this process, and the ratio from 1 to 3 masters (issue 15's target:
at least 1.6x).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			var err error
			if o.RouterBin, err = bench.FindRouter(); err != nil {
				return err
			}
			if len(cluster) > 0 {
				co := bench.ClusterOptions{Masters: cluster, Events: o.Events, Batch: o.Batch, PayloadBytes: o.PayloadBytes,
					Types: types, Routers: routers, RouterBin: o.RouterBin, RouterEnv: o.RouterEnv, Timeout: o.Timeout, Progress: cmd.ErrOrStderr()}
				if cmd.Flags().Changed("concurrency") {
					co.Concurrency = o.Concurrency
				}
				rep, err := bench.RunCluster(ctx, co)
				return report(ctx, cmd, rep, rep != nil, err, asJSON)
			}
			if natsServer == "" {
				if natsServer, err = bench.FindNATSServer(); err != nil {
					return err
				}
			} else if natsServer, err = exec.LookPath(natsServer); err != nil {
				return fmt.Errorf("--nats-server: %w", err)
			}
			o.NATSServer = natsServer
			if !noLatency {
				if o.EdgeBin, err = bench.FindEdge(); err != nil {
					return err
				}
			}
			o.Progress = cmd.ErrOrStderr()
			rep, err := bench.Run(ctx, o)
			return report(ctx, cmd, rep, rep != nil, err, asJSON)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Events, "events", 20000, "events per phase")
	f.IntVar(&o.Batch, "batch", 100, "events per call in the batched phases (at most 1000)")
	f.IntVar(&o.Concurrency, "concurrency", 8, "concurrent callers")
	f.IntVar(&o.PayloadBytes, "payload-bytes", 256, "size of each event's JSON data")
	f.StringVar(&natsServer, "nats-server", "", "nats-server executable (default: nats-server on PATH, else /usr/sbin/nats-server)")
	redisFlags(f, &o.RedisFsync, &o.RedisAOFRewriteMinSize)
	f.BoolVar(&o.AsAdmin, "as-admin", false, "publish with the admin key instead of an application key with a publish grant")
	f.IntSliceVar(&o.Callers, "callers", nil, "add a herald-single-cN phase for each N: single-event calls by N concurrent callers (e.g. 1,8,64,512)")
	f.IntVar(&o.LatencyRate, "latency-rate", 100, "events/s of the latency phase (one event per call)")
	f.DurationVar(&o.LatencyDuration, "latency-duration", 10*time.Second, "how long the latency phase publishes")
	f.BoolVar(&noLatency, "no-latency", false, "skip the latency phase (and the edge)")
	f.StringArrayVar(&o.EdgeEnv, "edge-env", nil, "KEY=VALUE added to the edge's environment (repeatable)")
	f.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "bound on the whole run")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.IntSliceVar(&cluster, "cluster", nil, "measure against local Redis Clusters of these numbers of masters instead (e.g. 1,2,3); --concurrency defaults to 16 there")
	f.IntVar(&types, "types", 6, "with --cluster: event types, spread evenly over the masters")
	f.IntVar(&routers, "routers", 1, "with --cluster: router processes sharing the callers")
	f.Func("router-pprof", "serve the router's pprof endpoints on this loopback address (e.g. 127.0.0.1:6060) to profile it during the run", func(addr string) error {
		o.RouterEnv = append(o.RouterEnv, "HERALD_PPROF_ADDR="+addr)
		return nil
	})
	return cmd
}

func benchWebhooksCommand() *cobra.Command {
	var o bench.WebhookOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "webhooks",
		Short: "Signed webhook deliveries/s and publish-to-receipt latency through the whole path",
		Long: `Measures webhook delivery through the whole path: gRPC Publish to the router,
the log in Redis, the edge's webhook engine, signed POSTs to local receivers
that verify every signature. Phases, each with an event type and endpoints
of its own (every endpoint its own application):

  1-endpoint         --events to one endpoint, published as fast as possible
  N-endpoints        --fanout-events, each delivered to every one of --endpoints
  N-endpoints+slow   the same with one more endpoint answering after --slow-sleep
  N-endpoints-again  the N-endpoints phase again (the slow endpoint's cost is
                     measured against the mean of the runs before and after)
  steady-R/s         --rate events/s for --rate-duration to one endpoint

It starts everything it measures, bound to 127.0.0.1, and stops it at the
end: a redis-server in a temporary directory (AOF, appendfsync --redis-fsync),
the registry in this process, the router and the edge as their own processes
(the binaries of 'make build', next to this executable or on PATH) so that
their CPU time and peak RSS are read from /proc. It reports deliveries/s,
publish-to-receipt p50/p99, what the slow endpoint cost the healthy ones, and
checks that every event reached every healthy endpoint with a valid
signature and was counted once for metering.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			var err error
			if o.RouterBin, err = bench.FindRouter(); err != nil {
				return err
			}
			if o.EdgeBin, err = bench.FindEdge(); err != nil {
				return err
			}
			o.Progress = cmd.ErrOrStderr()
			rep, err := bench.RunWebhooks(ctx, o)
			return report(ctx, cmd, rep, rep != nil, err, asJSON)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Events, "events", 20000, "events published in the one-endpoint phase")
	f.IntVar(&o.FanoutEvents, "fanout-events", 500, "events published in each many-endpoint phase (each goes to every endpoint)")
	f.IntVar(&o.Endpoints, "endpoints", 100, "endpoints of the many-endpoint phases")
	f.IntVar(&o.MaxConcurrency, "max-concurrency", 10, "requests in flight per endpoint (the registry's default is 10)")
	f.DurationVar(&o.SlowSleep, "slow-sleep", 10*time.Second, "how long the slow endpoint takes to answer")
	f.IntVar(&o.Rate, "rate", 1000, "events/s of the steady phase")
	f.DurationVar(&o.RateDuration, "rate-duration", 10*time.Second, "how long the steady phase publishes")
	f.IntVar(&o.PayloadBytes, "payload-bytes", 256, "size of each event's JSON data")
	redisFlags(f, &o.RedisFsync, &o.RedisAOFRewriteMinSize)
	f.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "bound on the whole run")
	f.StringArrayVar(&o.EdgeEnv, "edge-env", nil, "KEY=VALUE added to the edge's environment (repeatable), e.g. HERALD_PPROF_ADDR=127.0.0.1:6060 to profile it")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func benchFanoutCommand() *cobra.Command {
	var o bench.FanoutOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "fanout",
		Short: "One event to up to 19,900 SSE clients per edge, and publish-to-receive latency at a steady rate, against Centrifugo and Mercure",
		Long: `Measures the real-time edge with the same load client for every target:

  levels       one event at a time (--events per level) to --levels idle SSE
               clients: p50/p99/max from the start of the publish call to each
               client's receipt; the server's RSS per idle connection
  two edges    (--two-edges, Herald) the largest level on each of two edges
               (--cluster N: Herald on a local Redis Cluster of N masters)
  steady       --rate events/s for --rate-duration to --rate-clients clients
  saturation   --saturation-rates in turn until one is not held (p99 >= 50 ms,
               an event missing after 10 s, or published below 95% of the rate)

Targets (--targets): herald (gRPC Publish → router → Redis with AOF → edge →
SSE, all started here: a private redis-server, the registry in this process,
the router and edge binaries of 'make build' as their own processes),
centrifugo (--centrifugo BIN: its uni-directional SSE transport, in memory,
published over its HTTP API) and mercure (--mercure BIN: the hub, in memory,
published with POST). The clients live in load processes ('herald bench
fanout-loader', up to 19,900 connections each under a 20,000-file limit),
connecting from 127.0.0.x source addresses. Every event's data carries its
number and the publisher's clock: a client records each event once and
counts duplicates; the run checks that every client got every event once.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			var err error
			if slices.Contains(o.Targets, "herald") || len(o.Targets) == 0 {
				if o.RouterBin, err = bench.FindRouter(); err != nil {
					return err
				}
				if o.EdgeBin, err = bench.FindEdge(); err != nil {
					return err
				}
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			o.Loader = []string{exe, "bench", "fanout-loader"}
			o.Progress = cmd.ErrOrStderr()
			rep, err := bench.RunFanout(ctx, o)
			return report(ctx, cmd, rep, rep != nil, err, asJSON)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.Targets, "targets", []string{"herald"}, "what to measure, in order: herald, centrifugo, mercure")
	f.IntSliceVar(&o.Levels, "levels", []int{1000, 10000, 19900}, "client counts of the one-event phases (increasing, at most 19,900)")
	f.IntVar(&o.Events, "events", 5, "events published one at a time at each level")
	f.BoolVar(&o.TwoEdges, "two-edges", false, "Herald: a second edge with the largest level of clients on each")
	f.IntVar(&o.RateClients, "rate-clients", 100, "clients of the steady and saturation phases")
	f.IntVar(&o.Rate, "rate", 1000, "events/s of the steady phase")
	f.DurationVar(&o.RateDuration, "rate-duration", 10*time.Second, "length of the steady phase")
	f.IntSliceVar(&o.SaturationRates, "saturation-rates", nil, "offered rates of the saturation phases (default 2000,4000,6000,8000,10000,12000,16000,20000)")
	f.DurationVar(&o.SaturationDuration, "saturation-duration", 5*time.Second, "length of each saturation phase")
	f.BoolVar(&o.NoSaturation, "no-saturation", false, "skip the saturation phases")
	f.IntVar(&o.PayloadBytes, "payload-bytes", 256, "size of each event's JSON data")
	redisFlags(f, &o.RedisFsync, &o.RedisAOFRewriteMinSize)
	f.IntVar(&o.Cluster, "cluster", 0, "Herald: run on a local Redis Cluster of this many masters (0: one redis-server)")
	f.StringVar(&o.CentrifugoBin, "centrifugo", "", "centrifugo executable (target centrifugo)")
	f.StringVar(&o.MercureBin, "mercure", "", "mercure executable (target mercure)")
	f.StringArrayVar(&o.EdgeEnv, "edge-env", nil, "KEY=VALUE added to the edge's environment (repeatable)")
	f.DurationVar(&o.Timeout, "timeout", 30*time.Minute, "bound on the whole run")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func benchUsageCommand() *cobra.Command {
	var o bench.UsageOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Metering lag (record appended to record counted) at a target rate of usage records, against raw XADD",
		Long: `Measures metering under load: --producers producers, each with a
platform/usage Appender (batched, as router and edge append), add usage
records at --rate records/s for --duration while the metering service folds
them. Records are DELIVERED records spread over --tenants, --apps (consumer
applications, Zipf-distributed), --types (event types) and the seven delivery
channels, each with a unique id; a --duplicates fraction repeats a recent
record (a redelivery), which must not be counted.

Lag: every --probe-every one record is a probe; its lag runs from its Add to
the moment its seen marker, set in the same script as its counters, is
visible. Reported: p50/p99/max lag, the achieved append rate, how long the
stream took to drain, metering's CPU per record and peak RSS, Redis' CPU per
record, and a raw baseline in the same run: XADD of the same entries with
nothing folding (the rate Redis alone sustains). Checks: each bucket kind
(minute, quarter-hour, hour, day) counts every unique record once, cell by
cell with its bytes, and metering counted every duplicate as a duplicate.

It starts everything it measures, bound to 127.0.0.1, and stops it at the
end: a redis-server in a temporary directory (AOF, appendfsync --redis-fsync),
the registry in this process (metering resolves keys through it), and
metering as its own process (the binary of 'make build', next to this
executable or on PATH) so that its CPU time and peak RSS are read from /proc.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			var err error
			if o.MeteringBin, err = bench.FindMetering(); err != nil {
				return err
			}
			o.Progress = cmd.ErrOrStderr()
			rep, err := bench.RunUsage(ctx, o)
			return report(ctx, cmd, rep, rep != nil, err, asJSON)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Rate, "rate", 50000, "usage records/s offered (duplicates included), over all producers")
	f.DurationVar(&o.Duration, "duration", 20*time.Second, "how long the producers append")
	f.IntVar(&o.Producers, "producers", 4, "producers, each with an Appender of its own (as each router and edge has)")
	f.IntVar(&o.BatchSize, "batch", 500, "the Appenders' records per stream entry")
	f.DurationVar(&o.FlushEvery, "flush-every", 100*time.Millisecond, "the Appenders' longest wait before a flush")
	f.Float64Var(&o.Duplicates, "duplicates", 0.05, "fraction of appended records that repeat a recent one (0 for the default, negative for none)")
	f.IntVar(&o.Tenants, "tenants", 50, "tenants")
	f.IntVar(&o.Apps, "apps", 500, "consumer applications, spread over the tenants")
	f.IntVar(&o.Types, "types", 40, "event types (published by types/2 producer applications)")
	f.DurationVar(&o.ProbeEvery, "probe-every", 10*time.Millisecond, "how often a record is picked to measure its lag")
	redisFlags(f, &o.RedisFsync, &o.RedisAOFRewriteMinSize)
	f.BoolVar(&o.NoRaw, "no-raw", false, "skip the raw XADD baseline")
	f.StringArrayVar(&o.MeteringEnv, "metering-env", nil, "KEY=VALUE added to metering's environment (repeatable), e.g. HERALD_PPROF_ADDR=127.0.0.1:6062 to profile it")
	f.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "bound on the whole run")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func benchBridgeCommand() *cobra.Command {
	var o bench.BridgeOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "bridge",
		Short: "Events/s through each bridge sink and source, against the broker's own client in the same run",
		Long: `Measures the bridges: for each system, --events events through its sink
(already in the log when the bridge is created; the clock runs from its
creation until the far side has them all) and through its source (records
already in the topic or queue, or for MQTT published once the source has
subscribed; the clock stops when the log holds them all, validated and
deduplicated), each against the system's own client driving the same broker
with the same records: a franz-go producer (acks=all) and group consumer, an
amqp091 publisher with confirms and consumer with acks, paho QoS 1 publisher
and subscriber, a parquet-go writer. The target is at least 0.5x.

It starts everything it measures, bound to 127.0.0.1, and stops it at the
end: a redis-server in a temporary directory, the registry in this process,
the router and the edge as their own processes (the binaries of 'make
build'), an in-process Kafka (franz-go's kfake), a private rabbitmq-server
and mosquitto (Debian's packages).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			var err error
			if o.RouterBin, err = bench.FindRouter(); err != nil {
				return err
			}
			if o.EdgeBin, err = bench.FindEdge(); err != nil {
				return err
			}
			o.Progress = cmd.ErrOrStderr()
			rep, err := bench.RunBridges(ctx, o)
			return report(ctx, cmd, rep, rep != nil, err, asJSON)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.Systems, "systems", nil, "systems to measure (kafka,amqp,mqtt,lake; default all)")
	f.IntVar(&o.Events, "events", 20000, "events through each sink and source")
	f.IntVar(&o.PayloadBytes, "payload-bytes", 256, "size of each event's JSON data")
	f.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "bound on the whole run")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

// benchLoaderCommand is the load client of `herald bench fanout`: it reads
// commands on stdin and answers on stdout.
func benchLoaderCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "fanout-loader",
		Short:  "The load client process of herald bench fanout",
		Hidden: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return bench.RunLoader(cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
}

// report prints a run's report (also when a check failed) and returns the
// run's error.
func report(ctx context.Context, cmd *cobra.Command, rep interface {
	WriteJSON(io.Writer) error
	WriteTable(io.Writer) error
}, ok bool, err error, asJSON bool) error {
	if ok && (err == nil || errors.Is(err, bench.ErrCheckFailed)) {
		out := cmd.OutOrStdout()
		write := rep.WriteTable
		if asJSON {
			write = rep.WriteJSON
		}
		if werr := write(out); werr != nil {
			return werr
		}
	}
	if ctx.Err() != nil && err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}
	return err
}

func benchFailoverCommand() *cobra.Command {
	var o bench.FailoverOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "failover",
		Short: "Kill a Redis Cluster master mid-publish: time to the first accepted publish on its shard, and no acknowledged event lost",
		Long: `Starts a local Redis Cluster of three masters with one replica each (AOF,
appendfsync always), the registry in this process and the router binary of
'make build' as its own process, with ` + bench.ReplicaAcksVar + `=1 (it waits for a
replica's acknowledgement before acknowledging a publish; --no-replica-acks
leaves it unset). --callers callers per shard publish --batch events per call
of one event type per master, retrying a failed call with the same events.
After --before it kills the master of the first type with SIGKILL. Once its
replica is master, the killed node is restarted (unless --no-restart) and
rejoins as the new master's replica: with one replica per master, a router
waiting for a replica's acknowledgement cannot accept a publish on that shard
before. It reports the times from the kill to the promotion, to the restart
and to the first accepted publish on that shard (a call started after the
kill), the longest pause of the other shards, and, after --after more
publishing, checks that every acknowledged event of every shard is in the log
once.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			var err error
			if o.RouterBin, err = bench.FindRouter(); err != nil {
				return err
			}
			o.Progress = cmd.ErrOrStderr()
			rep, err := bench.RunFailover(ctx, o)
			return report(ctx, cmd, rep, rep != nil, err, asJSON)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.NodeTimeout, "node-timeout", 2*time.Second, "cluster-node-timeout: how long a master may be unreachable before its replica takes over")
	f.IntVar(&o.Callers, "callers", 2, "callers per shard")
	f.IntVar(&o.Batch, "batch", 10, "events per call")
	f.DurationVar(&o.Before, "before", 3*time.Second, "how long to publish before the kill")
	f.DurationVar(&o.After, "after", 3*time.Second, "how long to publish after the shard accepts publishes again")
	f.IntVar(&o.PayloadBytes, "payload-bytes", 256, "size of each event's JSON data")
	f.BoolVar(&o.NoReplicaAcks, "no-replica-acks", false, "leave "+bench.ReplicaAcksVar+" unset")
	f.BoolVar(&o.NoRestart, "no-restart", false, "leave the killed node dead (by default it is restarted once its replica is master, and rejoins as its replica)")
	f.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "bound on the whole run")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

// redisFlags adds the flags of the private Redis a bench command starts.
func redisFlags(f *pflag.FlagSet, fsync, rewriteMin *string) {
	f.StringVar(fsync, "redis-fsync", "always", "Redis appendfsync: always (Herald's default) or everysec")
	f.StringVar(rewriteMin, "redis-aof-rewrite-min-size", redisserver.DefaultAOFRewriteMinSize, "Redis auto-aof-rewrite-min-size, e.g. 64mb (Redis' own default)")
}
