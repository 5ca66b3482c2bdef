package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func webhooksCommand() *cobra.Command {
	flags := &edgeFlags{}
	cmd := &cobra.Command{
		Use:   "webhooks",
		Short: "Webhook endpoints: verify a captured request, list attempts and dead letters, retry, replay",
		Long: `"verify" checks a captured webhook request against your secret offline and says exactly
why it fails. The other verbs call the edge's WebhookService about one endpoint (a
subscription with a webhook channel), with your application's key: you see your own
endpoints, the operator's key sees all.

A cursor is an event's position in the log (a stream id like 1764669600000-0): the SSE id,
the cursor of Publish and Subscribe, and the cursor column of "attempts".`,
	}
	cmd.AddCommand(webhooksVerifyCommand())
	// verify works offline: only the verbs that call the edge take its flags.
	for _, sub := range []*cobra.Command{
		webhooksAttemptsCommand(flags),
		webhooksDeadLettersCommand(flags),
		webhooksRetryCommand(flags),
		webhooksReplayCommand(flags),
	} {
		flags.register(sub, 30*time.Second)
		cmd.AddCommand(sub)
	}
	return cmd
}

// printJSON writes m as protojson, indented by encoding/json: protojson
// varies its spacing on purpose, and scripts diffing outputs should not.
func printJSON(out io.Writer, m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = buf.WriteTo(out)
	return err
}

// edgeError says which call failed, with the edge's reason.
func edgeError(what string, err error) error {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable:
		return fmt.Errorf("%s: the edge is unreachable or not ready (%w); check --edge or HERALD_EDGE_ADDR", what, err)
	case connect.CodeUnauthenticated:
		return fmt.Errorf("%s: the edge refused the key (%w); check --key or HERALD_KEY", what, err)
	case connect.CodeUnimplemented:
		return fmt.Errorf("%s: this edge does not serve webhooks (%w); is it older than this herald?", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func webhooksAttemptsCommand(flags *edgeFlags) *cobra.Command {
	var cursor, pageToken string
	var pageSize int32
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "attempts <subscription> [--cursor C]",
		Short: "List the delivery attempts of an endpoint, newest first",
		Long: `Lists the HTTP requests the webhook engine made to the endpoint, newest first: when, which
event (cursor, id, type), the attempt number, what started it (auto: the engine's delivery
or scheduled retry; manual: "webhooks retry"; replay), the status and latency, and why it
failed. --cursor shows only the attempts at one event. --json prints the whole response,
response headers and bodies included.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := flags.webhooks()
			if err != nil {
				return err
			}
			ctx, cancel := flags.context(cmd.Context())
			defer cancel()
			res, err := client.ListAttempts(ctx, connect.NewRequest(&edgev1.ListAttemptsRequest{
				SubscriptionId: args[0], Cursor: cursor, PageSize: pageSize, PageToken: pageToken,
			}))
			if err != nil {
				return edgeError("list attempts of "+args[0], err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, res.Msg)
			}
			if len(res.Msg.GetAttempts()) == 0 {
				fmt.Fprintf(out, "No attempts for %s%s.\n", args[0], ofCursor(cursor))
				return nil
			}
			writeAttempts(out, res.Msg.GetAttempts())
			morePages(out, res.Msg.GetNextPageToken())
			return nil
		},
	}
	cmd.Flags().StringVar(&cursor, "cursor", "", "only the attempts at the event with this cursor")
	cmd.Flags().Int32Var(&pageSize, "page-size", 0, "at most this many (default 100, at most 1000)")
	cmd.Flags().StringVar(&pageToken, "page-token", "", "the next page, as printed at the end of the previous one")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON (protojson)")
	return cmd
}

func ofCursor(cursor string) string {
	if cursor == "" {
		return ""
	}
	return " at cursor " + cursor
}

func morePages(out io.Writer, token string) {
	if token != "" {
		fmt.Fprintf(out, "\nMore: add --page-token %s\n", token)
	}
}

// writeAttempts prints attempts as a table.
func writeAttempts(out io.Writer, attempts []*edgev1.Attempt) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tCURSOR\tEVENT\tTYPE\t#\tTRIGGER\tRESULT\tLATENCY\tERROR")
	for _, a := range attempts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d ms\t%s\n",
			formatTime(a.GetTime()), a.GetCursor(), a.GetEventId(), a.GetEventType(), a.GetNumber(),
			trigger(a.GetTrigger()), result(a), a.GetLatencyMs(), oneLine(a.GetError()))
	}
	tw.Flush()
}

func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

func trigger(t edgev1.AttemptTrigger) string {
	switch t {
	case edgev1.AttemptTrigger_ATTEMPT_TRIGGER_MANUAL:
		return "manual"
	case edgev1.AttemptTrigger_ATTEMPT_TRIGGER_REPLAY:
		return "replay"
	case edgev1.AttemptTrigger_ATTEMPT_TRIGGER_TEST:
		return "test"
	}
	return "auto"
}

// result is "200 OK", or "no response" when none came.
func result(a *edgev1.Attempt) string {
	if a.GetStatus() == 0 {
		return "no response"
	}
	return statusText(int(a.GetStatus()))
}

func statusText(code int) string {
	if t := http.StatusText(code); t != "" {
		return fmt.Sprintf("%d %s", code, t)
	}
	return fmt.Sprint(code)
}

// oneLine keeps a table row on one line.
func oneLine(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Join(strings.Fields(s), " ")
}

func webhooksDeadLettersCommand(flags *edgeFlags) *cobra.Command {
	var pageToken string
	var pageSize int32
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "dead-letters <subscription>",
		Aliases: []string{"dead-letter", "dlq"},
		Short:   "List the events an endpoint gave up on, oldest first",
		Long: `Lists the endpoint's dead letters, oldest first: when the engine gave up, the event's
cursor, id and type, how many attempts were made, the last result and why it gave up.
--json prints them whole, with the event and every attempt. Send them again with
"herald webhooks replay <subscription> --failed-since TIME" or, one at a time,
"herald webhooks retry <subscription> <cursor>".`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := flags.webhooks()
			if err != nil {
				return err
			}
			ctx, cancel := flags.context(cmd.Context())
			defer cancel()
			res, err := client.ListWebhookDeadLetters(ctx, connect.NewRequest(&edgev1.ListWebhookDeadLettersRequest{
				SubscriptionId: args[0], PageSize: pageSize, PageToken: pageToken,
			}))
			if err != nil {
				return edgeError("list dead letters of "+args[0], err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, res.Msg)
			}
			dls := res.Msg.GetDeadLetters()
			if len(dls) == 0 && res.Msg.GetNextPageToken() == "" {
				fmt.Fprintf(out, "No dead letters for %s.\n", args[0])
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tCURSOR\tEVENT\tTYPE\tATTEMPTS\tLAST RESULT\tREASON")
			for _, d := range dls {
				last := "-"
				if n := len(d.GetAttempts()); n > 0 {
					last = result(d.GetAttempts()[n-1])
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", formatTime(d.GetTime()), d.GetCursor(),
					d.GetEvent().GetId(), d.GetEvent().GetType(), len(d.GetAttempts()), last, oneLine(d.GetReason()))
			}
			tw.Flush()
			fmt.Fprintf(out, "\n%d shown, %d in all.\n", len(dls), res.Msg.GetTotal())
			morePages(out, res.Msg.GetNextPageToken())
			return nil
		},
	}
	cmd.Flags().Int32Var(&pageSize, "page-size", 0, "at most this many (default 100, at most 1000)")
	cmd.Flags().StringVar(&pageToken, "page-token", "", "the next page, as printed at the end of the previous one")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON (protojson)")
	return cmd
}

// errAttemptFailed makes retry exit 1 when the endpoint did not take the
// event; its output has said why.
var errAttemptFailed = errors.New("the endpoint did not accept the event")

func webhooksRetryCommand(flags *edgeFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "retry <subscription> <cursor>",
		Short: "Send one event to an endpoint now, and show the attempt",
		Long: `Sends the event at <cursor> to the endpoint now, whatever happened to it before (delivered,
failing, dead-lettered), signed like every delivery and with the same webhook-id. The
attempt is recorded (trigger "manual") and printed. Exits 1 when the endpoint did not
answer 2xx.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := eventlog.ParseID(args[1]); err != nil {
				return err
			}
			client, err := flags.webhooks()
			if err != nil {
				return err
			}
			ctx, cancel := flags.context(cmd.Context())
			defer cancel()
			res, err := client.RetryDelivery(ctx, connect.NewRequest(&edgev1.RetryDeliveryRequest{
				SubscriptionId: args[0], Cursor: args[1],
			}))
			if err != nil {
				return edgeError("retry "+args[1]+" to "+args[0], err)
			}
			out := cmd.OutOrStdout()
			a := res.Msg.GetAttempt()
			if asJSON {
				if err := printJSON(out, res.Msg); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(out, "Attempt %d at %s (%s, %s): %s (%d ms)\n", a.GetNumber(), formatTime(a.GetTime()),
					a.GetEventId(), a.GetEventType(), result(a), a.GetLatencyMs())
				if !a.GetSuccess() && a.GetError() != "" {
					fmt.Fprintf(out, "  %s\n", oneLine(a.GetError()))
				}
			}
			if !a.GetSuccess() {
				return errAttemptFailed
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON (protojson)")
	return cmd
}

func webhooksReplayCommand(flags *edgeFlags) *cobra.Command {
	var cursor, failedSince, from, to string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "replay <subscription> (--cursor C | --failed-since TIME | --from C|TIME [--to C|TIME])",
		Short: "Queue events for delivery again to one endpoint",
		Long: `Queues events for delivery to the endpoint again, with their own cursor and webhook-id
(receivers that deduplicate on webhook-id see them as the same events). Give exactly one of:

  --cursor C            the one event at cursor C
  --failed-since TIME   every dead letter made at or after TIME
  --from C|TIME         a range of the log: every event of the endpoint's types (and filter)
                        after cursor C ("0": from the start of the retained log), or at or
                        after TIME; --to C|TIME ends it (up to and including cursor C, or
                        before TIME; default now)

TIME is RFC 3339, e.g. 2026-12-01T00:00:00Z; a cursor is a stream id like 1764669600000-0.
Replayed deliveries are recorded as attempts with trigger "replay".`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := replayRequest(args[0], cursor, failedSince, from, to)
			if err != nil {
				return err
			}
			client, err := flags.webhooks()
			if err != nil {
				return err
			}
			ctx, cancel := flags.context(cmd.Context())
			defer cancel()
			res, err := client.Replay(ctx, connect.NewRequest(req))
			if err != nil {
				return edgeError("replay to "+args[0], err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, res.Msg)
			}
			fmt.Fprintf(out, "Queued %d event(s) for delivery to %s.\n", res.Msg.GetQueued(), args[0])
			if res.Msg.GetQueued() > 0 {
				fmt.Fprintf(out, "Follow them with: herald webhooks attempts %s\n", args[0])
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cursor, "cursor", "", "replay the one event at this cursor")
	f.StringVar(&failedSince, "failed-since", "", "replay every dead letter made at or after this time (RFC 3339)")
	f.StringVar(&from, "from", "", "replay a range of the log from this cursor (exclusive) or time (inclusive)")
	f.StringVar(&to, "to", "", "end of the --from range: a cursor (inclusive) or a time (exclusive); default now")
	f.BoolVar(&asJSON, "json", false, "print the response as JSON (protojson)")
	return cmd
}

// replayRequest builds the Replay request from the flags, refusing
// combinations the edge would.
func replayRequest(sub, cursor, failedSince, from, to string) (*edgev1.ReplayRequest, error) {
	n := 0
	for _, v := range []string{cursor, failedSince, from} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("say what to replay with exactly one of --cursor C, --failed-since TIME or --from C|TIME")
	}
	if to != "" && from == "" {
		return nil, errors.New("--to ends a --from range: give --from too")
	}
	req := &edgev1.ReplayRequest{SubscriptionId: sub}
	switch {
	case cursor != "":
		if _, err := eventlog.ParseID(cursor); err != nil {
			return nil, fmt.Errorf("--cursor: %w", err)
		}
		req.Selection = &edgev1.ReplayRequest_Cursor{Cursor: cursor}
	case failedSince != "":
		t, err := time.Parse(time.RFC3339Nano, failedSince)
		if err != nil {
			return nil, fmt.Errorf("--failed-since %q: give a time in RFC 3339, such as 2026-12-01T00:00:00Z", failedSince)
		}
		req.Selection = &edgev1.ReplayRequest_FailedSince{FailedSince: timestamppb.New(t)}
	default:
		r := &edgev1.LogRange{}
		t, c, err := cursorOrTime("--from", from)
		if err != nil {
			return nil, err
		}
		if t != nil {
			r.From = &edgev1.LogRange_FromTime{FromTime: t}
		} else {
			r.From = &edgev1.LogRange_AfterCursor{AfterCursor: c}
		}
		if to != "" {
			t, c, err := cursorOrTime("--to", to)
			if err != nil {
				return nil, err
			}
			if t != nil {
				r.To = &edgev1.LogRange_ToTime{ToTime: t}
			} else {
				r.To = &edgev1.LogRange_ToCursor{ToCursor: c}
			}
		}
		req.Selection = &edgev1.ReplayRequest_Range{Range: r}
	}
	return req, nil
}

// cursorOrTime reads a flag that takes an RFC 3339 time or a cursor.
func cursorOrTime(flag, v string) (*timestamppb.Timestamp, string, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return timestamppb.New(t), "", nil
	}
	if _, err := eventlog.ParseID(v); err != nil {
		return nil, "", fmt.Errorf("%s %q is neither a cursor (a stream id like 1764669600000-0) nor a time in RFC 3339 (2026-12-01T00:00:00Z)", flag, v)
	}
	return nil, v, nil
}
