{{/*
The alert rules. deploy/alerts.yaml holds the same groups with the default thresholds and the
release name "callbridge"; tests/chart checks that the two stay identical.
*/}}
{{- define "callbridge.alertGroups" -}}
{{- $r := .Values.prometheusRule -}}
{{- $fullname := include "callbridge.fullname" . -}}
groups:
  - name: callbridge
    rules:
      - alert: CallbridgeGapOpenTooLong
        expr: max by (namespace, pod) (callbridge_gap_oldest_age_seconds) > {{ $r.gapOldestAgeSeconds }}
        labels:
          severity: critical
        annotations:
          summary: A call has waited {{`{{ $value | humanizeDuration }}`}} for a missing state on {{`{{ $labels.pod }}`}}
          description: >-
            The oldest open gap is close to sequencer.backfill_max_wait (5m by default). When it is
            reached the bridge publishes a backfill_failed gap record: a hole in the ordered stream.
            Check GoTo API reachability, credentials and rate limits (back-fill failures, logs).
      - alert: CallbridgeBackfillFailedGaps
        expr: sum by (namespace) (rate(callbridge_gap_records_published_total{reason="backfill_failed"}[15m])) > 0
        labels:
          severity: critical
        annotations:
          summary: Gap records with reason backfill_failed are being published
          description: >-
            A missing state could not be back-filled from GoTo within sequencer.backfill_max_wait,
            so the ordered topic carries an explicit gap. Each one is lost data for a consumer.
      - alert: CallbridgeBackfillFailing
        expr: sum by (namespace, pod) (rate(callbridge_backfill_failures_total[5m])) > {{ $r.backfillFailuresPerSecond }}
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: Back-fill requests to GoTo are failing on {{`{{ $labels.pod }}`}}
          description: >-
            {{`{{ $value | humanize }}`}} failed back-fill answers per second. Open gaps will turn into
            backfill_failed gap records if this lasts longer than sequencer.backfill_max_wait.
      - alert: CallbridgeChannelReconnecting
        expr: sum by (namespace, pod) (rate(callbridge_channel_reconnects_total[5m])) > {{ $r.channelReconnectsPerSecond }}
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: The GoTo notification channel keeps reconnecting on {{`{{ $labels.pod }}`}}
          description: >-
            The WebSocket channel is reconnected or recreated often (see the reason label of
            callbridge_channel_reconnects_total). Notifications may be delayed; catch-up and
            back-fill repair what is missed.
      - alert: CallbridgeUnsubscribeFailing
        expr: sum by (namespace, pod) (increase(callbridge_channel_unsubscribe_failures_total[1h])) > 0
        labels:
          severity: warning
        annotations:
          summary: An account removed from goto.account_keys could not be unsubscribed on {{`{{ $labels.pod }}`}}
          description: >-
            The channel still has a call-events subscription for an account key that is no
            longer configured, so that account's calls still reach the raw and ordered topics.
            The bridge retries at every repair pass; the error log names the account key, the
            endpoint and GoTo's errorCode.
      - alert: CallbridgeCatchupFailed
        expr: sum by (namespace, pod) (increase(callbridge_catchup_failures_total[15m])) > 0
        labels:
          severity: warning
        annotations:
          summary: A catch-up or report sweep step failed for good on {{`{{ $labels.pod }}`}}
          description: >-
            After a channel outage the bridge lists active calls and sweeps report summaries to
            find calls GoTo could not deliver; a step failed 6 times in a row. A call that had no
            state delivered at all may be missing from the ordered topic. The log line "failed for
            good" names the call or the listing; check GoTo API reachability and credentials.
      - alert: CallbridgeReportSweepPastRetention
        expr: sum by (namespace, pod) (increase(callbridge_report_sweeps_past_retention_total[1h])) > 0
        labels:
          severity: warning
        annotations:
          summary: A report sweep reached further back than the sequencer remembers on {{`{{ $labels.pod }}`}}; a call may be published twice
          description: >-
            Report sweeps write every state of the calls GoTo could not deliver during
            an outage to raw again. One wrote calls while its window (margin and clock
            skew included) reached further back than sequencer.closed_retention, so a
            completed call the sequencer had already forgotten may now appear twice in
            the ordered topic. The warning log line names the window. The sweep ran
            late, queued behind others at GoTo's 10 requests/s, or the outage was longer
            than the retention; raise sequencer.closed_retention, and check
            callbridge_report_sweep_windows_pending and GoTo API latency.
      - alert: CallbridgeSequencerRestarting
        expr: sum by (namespace, pod) (increase(callbridge_sequencer_run_failures_total[15m])) > 3
        labels:
          severity: critical
        annotations:
          summary: The sequencer keeps failing and restarting on {{`{{ $labels.pod }}`}}
          description: >-
            Sequencer runs end with an error and restart from Kafka again and again, so its
            partitions make little or no progress (the ordered topic falls behind). Nothing is
            published past the failing point, so nothing is lost, but nothing moves. The log line
            "sequencer run failed; restarting from Kafka" gives the cause, for example an output
            the broker refuses for good (topic max.message.bytes below 1000000?).
      - alert: CallbridgeSecondWriter
        expr: sum by (namespace, pod) (increase(callbridge_sequencer_foreign_outputs_total[1h])) > 0
        labels:
          severity: critical
        annotations:
          summary: Another writer wrote an ordered partition callbridge on {{`{{ $labels.pod }}`}} owned; states may be published twice
          description: >-
            An output of this replica's sequencer landed at another offset of the ordered topic
            than right after its previous one, so something else wrote that partition meanwhile,
            most likely another replica the consumer group also gave the partition to. The
            sequencer stopped writing it and restarted, but outputs already sent may duplicate
            the other writer's. The log line names the partition and the offsets. Check the
            broker's consumer-group coordinator (a group must never give one partition to two
            members) and every process writing the ordered topic.
      - alert: CallbridgeNoChannelOwner
        expr: max by (namespace) (callbridge_channel_ready) < 1
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: No callbridge replica holds the GoTo notification channel
          description: >-
            No replica has the channel up (the elected owner is failing to set it up, or no
            replica owns it). GoTo delivers nothing meanwhile; the owner's /readyz body and logs
            say why.
      - alert: CallbridgeNotReady
        expr: (sum by (namespace, pod) (kube_pod_status_ready{condition="true", pod=~"{{ $fullname }}-[bcdfghjklmnpqrstvwxz2456789]{1,10}-[bcdfghjklmnpqrstvwxz2456789]{5}"}) == 0) and on (namespace, pod) (kube_pod_status_phase{phase="Running"} == 1)
        for: {{ $r.notReadyFor }}
        labels:
          severity: critical
        annotations:
          summary: callbridge pod {{`{{ $labels.pod }}`}} takes no webhooks (not ready)
          description: >-
            /readyz/traffic, the readiness probe, has failed for a while on a running pod, so the
            Service sends it nothing: its webhook listener is not bound, or its shutdown is stuck
            (Kafka is not part of it: CallbridgeKafkaUnreachable). The /readyz/traffic body names the failing check. The channel
            and the sequencer are not part of it (CallbridgeNoChannelOwner,
            CallbridgeSequencerNotInGroup). Needs kube-state-metrics.
      - alert: CallbridgeSequencerNotInGroup
        expr: min by (namespace, pod) (callbridge_sequencer_in_group) == 0 unless on (namespace, pod) (callbridge_kafka_reachable == 0)
        for: {{ $r.notReadyFor }}
        labels:
          severity: warning
        annotations:
          summary: The sequencer on {{`{{ $labels.pod }}`}} is not in its consumer group
          description: >-
            The pod reaches Kafka but its sequencer has had no assignment from the raw topic's
            consumer group for a while (/readyz names it: checks.sequencer), so it sequences
            nothing; the other replicas take its partitions over only if it left the group. Check
            the log for "sequencer run failed" and the group's state on the broker.
      - alert: CallbridgeKafkaUnreachable
        expr: min by (namespace, pod) (callbridge_kafka_reachable) == 0
        for: 2m
        labels:
          severity: critical
        annotations:
          summary: callbridge on {{`{{ $labels.pod }}`}} cannot reach Kafka
          description: >-
            The bridge's periodic Kafka check fails: webhooks are answered 503 after kafka.ack_timeout
            and the sequencer stops. Check the brokers, the network policy and the credentials.
      - alert: CallbridgeWebhookUnavailable
        expr: sum by (namespace) (rate(callbridge_webhook_responses_total{status="503"}[5m])) > 0
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: callbridge answers GoTo's webhooks with 503
          description: >-
            Kafka did not acknowledge notifications within kafka.ack_timeout. The bridge keeps them
            queued (callbridge_kafka_producer_queue_depth) until its queue is full (by default 128 MiB); after
            that writes wait for room until kafka.ack_timeout, GoTo's two retries fail too and the
            notifications are lost to the channel, for back-fill to repair
            (callbridge_webhook_responses_total's outcome label says which).
      - alert: CallbridgeRawConsumerLagGrowing
        expr: sum by (namespace) (callbridge_raw_consumer_lag) > {{ $r.rawConsumerLag }} and sum by (namespace) (delta(callbridge_raw_consumer_lag[10m])) > 0
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: The sequencer is falling behind the raw topic
          description: >-
            {{`{{ $value | humanize }}`}} raw records wait for the sequencer and the backlog keeps
            growing: end-to-end latency rises. Check the sequencer's partitions, Kafka and CPU.
      - alert: CallbridgeDeadLetterGrowing
        expr: sum by (namespace, reason) (rate(callbridge_dead_letter_records_total[15m])) > 0 or sum by (namespace, reason) (rate(callbridge_sequencer_dead_letters_total[15m])) > 0
        labels:
          severity: warning
        annotations:
          summary: Notifications are being dead-lettered (reason {{`{{ $labels.reason }}`}})
          description: >-
            Bodies that could not be processed (by ingest, or states the sequencer set aside: a
            conflicting duplicate, a state after ENDING) go to the dead-letter topic with the
            reason and the failing field in headers. Inspect them: a GoTo payload change shows up
            here first.
      - alert: CallbridgeDeadLetterLost
        expr: sum by (namespace, pod, reason) (increase(callbridge_dead_letters_unwritten_total[15m])) > 0
        labels:
          severity: critical
        annotations:
          summary: A dead letter could not be written on {{`{{ $labels.pod }}`}} (reason {{`{{ $labels.reason }}`}})
          description: >-
            Kafka refused a dead-letter record for good after its webhook answer had timed out
            (503), and three more writes failed; the body is not in the dead-letter topic. GoTo
            retried the webhook twice, a WebSocket frame is not sent again. The error log line
            names the reason, the key and the size; check the dead-letter topic and the brokers.
{{- end }}
