import ArgumentParser
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
#if canImport(Glibc)
    import Glibc
#endif

/// `cluster`: two nodes on one PostgreSQL database (a throwaway cluster unless `--database-url`).
/// (a) The stream across nodes: simulated runtimes connected to node A, stream subscribers on
/// node B, so that every event reaches B by the database's change notices; as `stream` measures
/// it, with the same run on one node (runtimes and subscribers on A, B idle) as the baseline.
/// (b) Failover: two `cloud-agent serve` processes with short cluster settings; real runtimes
/// launched and hosted by A, then A is killed (SIGKILL). Figures: until every runtime said hello to B (its
/// session record's `runtime.connectedNode`/`connectedAt`), and the lag of the idle stops whose
/// deadlines fall just after the kill (stopped through B).
struct ClusterBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster", abstract: "Two nodes on one PostgreSQL database: the stream across nodes, and the failover of a killed node."
    )

    @OptionGroup var options: BenchOptions
    @OptionGroup var backend: StoreOptions
    @Option(help: "Parts to run: stream, failover or both (comma-separated).") var parts: String = "stream,failover"
    @Option(help: "Stream: simulated runtimes (default: 10, quick: 2).") var runtimes: Int?
    @Option(help: "Stream: subscribers per session (default: 4, quick: 2).") var subscribers: Int?
    @Option(help: "Stream: events per second in all, latency phase (default: 5000, quick: 500).") var rate: Double?
    @Option(help: "Stream: measured seconds of the latency phase (default: 10, quick: 3).") var seconds: Double?
    @Option(help: "Stream: measured seconds of the peak phase (default: 5, quick: 2).") var peakSeconds: Double?
    @Option(help: "Failover: real runtimes hosted by the node that is killed (default: 40, quick: 5).") var failoverRuntimes: Int?
    @Option(help: "Failover: idle timeout, ms (default: 12000, quick: 6000); the runtimes must all start within it.") var failoverIdleTimeoutMs: Int64?

    /// The failover's cluster settings (`CLOUD_AGENT_NODE_HEARTBEAT`, `CLOUD_AGENT_NODE_LEASE`).
    static let nodeHeartbeat = "200ms", nodeLease = "1s"
    /// The kill comes this long before the earliest idle deadline.
    static let killLeadMs: Int64 = 300

    func run() async throws {
        var backend = self.backend
        // Several nodes need PostgreSQL: a throwaway cluster unless a server is given.
        if !backend.onPostgres { backend.postgres = true }
        let wanted = Set(parts.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        let figures = try await backend.withDatabases(note: options.note) { databases in
            var figures: [Figure] = []
            if wanted.contains("stream") { figures += try await measureStream(databases) }
            if wanted.contains("failover") { figures += try await measureFailover(databases) }
            return figures
        }
        options.emit(figures)
    }

    // MARK: (a) The stream across nodes

    func measureStream(_ databases: BenchDatabases) async throws -> [Figure] {
        let plan = StreamBench.Plan(
            connections: runtimes ?? (options.quick ? 2 : 10), rate: rate ?? (options.quick ? 500 : 5000),
            warmup: options.quick ? 0.5 : 1, seconds: seconds ?? (options.quick ? 3 : 10), peakSeconds: peakSeconds ?? (options.quick ? 2 : 5),
            window: 64
        )
        let subscribers = self.subscribers ?? (options.quick ? 2 : 4)
        let database = try await databases.fresh()
        let scratch = try ScratchDirectory("cluster-stream")
        defer { scratch.remove() }
        func configuration(_ name: String) -> ServerConfiguration {
            var configuration = InProcessServer.configuration(directory: scratch.url.appendingPathComponent(name), database: database)
            configuration.streamBufferEvents = StreamBench.streamBuffer
            return configuration
        }
        let logger = InProcessServer.logger(options.logLevel)
        let clients = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let a = try await InProcessServer.start(configuration("a"), logLevel: options.logLevel, asNode: true)
        var b: InProcessServer?
        let single: StreamBench.Outcome, across: StreamBench.Outcome
        do {
            let nodeB = try await InProcessServer.start(configuration("b"), logLevel: options.logLevel, asNode: true)
            b = nodeB
            try await waitForListeners(2, configuration: configuration("a"))
            let nodeA = StreamBench.Node(plane: a.plane, webSocketBase: a.webSocketBase)
            let onB = StreamBench.Node(plane: nodeB.plane, webSocketBase: nodeB.webSocketBase)
            options.note("cluster (a): \(plan.connections) runtimes × \(subscribers) subscribers, \(plan.rate) events/s; first all on node A")
            single = try await StreamBench.measure(plan: plan, subscribers: subscribers, ingest: nodeA, subscribe: nodeA, clients: clients, logger: logger)
            options.note("cluster (a): runtimes on node A, subscribers on node B")
            across = try await StreamBench.measure(plan: plan, subscribers: subscribers, ingest: nodeA, subscribe: onB, clients: clients, logger: logger)
        } catch {
            await b?.stop()
            await a.stop()
            try? await clients.shutdownGracefully()
            throw error
        }
        await b?.stop()
        await a.stop()
        try? await clients.shutdownGracefully()

        var params: [String: JSONValue] = [
            "nodes": "2 in this process, one database", "runtimes": .number(Double(plan.connections)),
            "subscribersPerSession": .number(Double(subscribers)), "rate": .number(plan.rate), "seconds": .number(plan.seconds),
            "peakSeconds": .number(plan.peakSeconds), "window": .number(Double(plan.window)), "eventsSent": .number(Double(across.sent)),
            "subscriberOverflows": .number(Double(across.overflows)), "undeliveredAfter300s": .number(Double(across.undelivered)),
            "latency": .object(across.latencies.summary), "baselineLatency": .object(single.latencies.summary),
            "latencyFrom": "when the event was due to be sent (coordinated-omission safe)",
            "baseline": "the same run with the subscribers on node A too (one node serving, the other idle), in this run",
            "path": "runtime → node A (stored, NOTIFY in the transaction) → node B's LISTEN connection → events read from the store → subscribers",
        ]
        params = databases.tagged(params)
        let latency = params
        params["peakDeliveredToSubscribersPerSecond"] = .number(across.peakDelivered.rounded())
        params["baselinePeakDeliveredToSubscribersPerSecond"] = .number(single.peakDelivered.rounded())
        return [
            Figure(
                "cluster.stream_latency_p50_ms", across.latencies.percentileMs(50), unit: "ms", baseline: single.latencies.percentileMs(50), params: latency),
            Figure(
                "cluster.stream_latency_p99_ms", across.latencies.percentileMs(99), unit: "ms", baseline: single.latencies.percentileMs(99), params: latency),
            Figure("cluster.stream_peak_events_per_second", across.peak, unit: "events/s (acknowledged)", baseline: single.peak, params: params),
        ]
    }

    /// Until `count` nodes listen for change notices (their LISTEN connections are named
    /// after them): a notice sent before would be missed.
    private func waitForListeners(_ count: Int, configuration: ServerConfiguration) async throws {
        let raw = try RawDatabase.open(configuration)
        defer { raw.close() }
        let listening = await waitUntil(30, everyMs: 50) {
            ((try? await raw.count(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name LIKE 'cloud-agent-listener:%' AND datname = current_database()")) ?? 0) >= count
        }
        guard listening else { throw BenchFailure("the nodes did not all listen for change notices within 30 s") }
    }

    // MARK: (b) Failover

    func measureFailover(_ databases: BenchDatabases) async throws -> [Figure] {
        let count = failoverRuntimes ?? (options.quick ? 5 : 40)
        let idleTimeoutMs = failoverIdleTimeoutMs ?? (options.quick ? 6000 : 12_000)
        let serve = try Products.locate("cloud-agent", note: options.note)
        // serve launches the runtime beside it.
        _ = try Products.locate("cloud-agent-runtime", note: options.note)
        let database = try await databases.fresh()
        guard let url = database.url else { throw BenchFailure("the failover needs PostgreSQL") }
        let scratch = try ScratchDirectory("cluster-failover")
        defer { scratch.remove() }
        let environment = [
            "CLOUD_AGENT_DATABASE_URL": url, "CLOUD_AGENT_API_TOKEN": InProcessServer.token, "CLOUD_AGENT_SANDBOX": "none",
            "CLOUD_AGENT_NODE_HEARTBEAT": Self.nodeHeartbeat, "CLOUD_AGENT_NODE_LEASE": Self.nodeLease,
            "CLOUD_AGENT_IDLE_TIMEOUT": "\(idleTimeoutMs)ms", "CLOUD_AGENT_STOP_GRACE": "2s", "CLOUD_AGENT_MAX_RUNTIMES": "\(count + 8)",
            "CLOUD_AGENT_LOG_LEVEL": options.logLevel == "error" ? "info" : options.logLevel,
        ]
        options.note("cluster (b): two serve processes (heartbeat \(Self.nodeHeartbeat), lease \(Self.nodeLease)), \(count) real runtimes on node A")
        func start(_ name: String) async throws -> ClusterNode.Child {
            try await ClusterNode.Child.start(
                name: name, serve: serve, environment: environment, dataDirectory: scratch.url.appendingPathComponent(name), logDirectory: scratch.url
            )
        }
        let readerConfiguration = InProcessServer.configuration(directory: scratch.url.appendingPathComponent("reader"), database: database)
        let a = try await start("node-a")
        var b: ClusterNode.Child?
        var reader: OpenedStore?
        do {
            let nodeB = try await start("node-b")
            b = nodeB
            let opened = try await OpenedStore.open(readerConfiguration, logger: InProcessServer.logger("error"))
            reader = opened
            let figures = try await failover(
                count: count, idleTimeoutMs: idleTimeoutMs, a: a, b: nodeB, store: opened.store, configuration: readerConfiguration)
            await finish(a: a, b: nodeB, reader: opened)
            return databases.taggedFigures(figures)
        } catch {
            options.note(
                "cluster (b) failed; node logs in \(scratch.url.path) are removed, the last lines of node B's:\n\((try? String(contentsOf: scratch.url.appendingPathComponent("node-b.log"), encoding: .utf8))?.suffix(3000) ?? "")"
            )
            if let b, let reader {
                await finish(a: a, b: b, reader: reader)
            } else {
                a.killHard()
                await b?.stop()
                await reader?.close()
            }
            throw error
        }
    }

    private func failover(
        count: Int, idleTimeoutMs: Int64, a: ClusterNode.Child, b: ClusterNode.Child, store: any SessionStore, configuration: ServerConfiguration
    ) async throws -> [Figure] {
        // Both registered, and A has read the registry since B registered: the runtimes it
        // launches are told B's route (CLOUD_AGENT_CONTROL_URLS).
        let raw = try RawDatabase.open(configuration)
        defer { raw.close() }
        guard await waitUntil(20, everyMs: 50, { ((try? await raw.count("SELECT COUNT(*) FROM nodes")) ?? 0) >= 2 }) else {
            throw BenchFailure("the two nodes did not both register within 20 s")
        }
        try await Task.sleep(for: .milliseconds(1000))

        // Sessions launched and hosted by node A, each running a short execution, then idle.
        let api = BenchAPI(baseURL: a.baseURL, token: InProcessServer.token)
        let ids = try await withThrowingTaskGroup(of: SessionID.self) { group in
            for _ in 0..<count {
                group.addTask {
                    let created = try await api.expect(201, .POST, "/v1/sessions", json: ["prompt": "say ready"])
                    guard let id = created["sessionId"]?.stringValue.flatMap(SessionID.init(rawValue:)) else { throw BenchFailure("no sessionId") }
                    try await api.expect(202, .POST, "/v1/sessions/\(id)/initiate")
                    return id
                }
            }
            var ids: [SessionID] = []
            for try await id in group { ids.append(id) }
            return ids
        }
        let started = await waitUntil(120, everyMs: 100) {
            for id in ids {
                guard let session = try? await store.session(id), session.runtime.state == .running, session.activeExecutionId == nil,
                    session.runtime.connectedNode == a.nodeId
                else { return false }
            }
            return true
        }
        guard started else { throw BenchFailure("the \(count) runtimes did not all start on node A and finish their execution within 120 s") }

        // The idle deadlines as the rules compute them; the kill comes just before the earliest.
        var deadlines: [Date] = []
        for id in ids {
            guard let session = try await store.session(id),
                let last = IdlePolicy.lastActivity(runtimeStartedAt: session.runtime.startedAt, latest: try await store.latestExecution(of: id))
            else { throw BenchFailure("no last activity for \(id)") }
            deadlines.append(last.at.adding(milliseconds: idleTimeoutMs))
        }
        guard let earliest = deadlines.min(), let latest = deadlines.max() else { throw BenchFailure("no deadline") }
        let killAt = earliest.adding(milliseconds: -Self.killLeadMs)
        let wait = killAt.timeIntervalSinceNow
        guard wait > 0.05 else {
            throw BenchFailure(
                "the runtimes took too long to start: the earliest idle deadline is \(Int(-wait * 1000)) ms too near; raise --failover-idle-timeout-ms")
        }
        try await Task.sleep(for: .milliseconds(Int(wait * 1000)))
        let killed = Date()
        a.killHard()
        options.note("cluster (b): node A killed; deadlines \(earliest.milliseconds(since: killed))…\(latest.milliseconds(since: killed)) ms after the kill")

        // (1) Every runtime says hello to node B.
        let reconnected = await waitUntil(60, everyMs: 20) {
            for id in ids {
                guard let runtime = try? await store.session(id)?.runtime, runtime.connectedNode == b.nodeId || runtime.state == .stopped else { return false }
            }
            return true
        }
        var reconnects = Latencies()
        var notReconnected = 0
        for id in ids {
            guard let runtime = try await store.session(id)?.runtime, runtime.connectedNode == b.nodeId, let at = runtime.connectedAt,
                at >= killed.truncatedToMilliseconds
            else {
                notReconnected += 1
                continue
            }
            reconnects.record(micros: UInt64(max(0, at.milliseconds(since: killed))) * 1000)
        }
        guard reconnected, notReconnected == 0 else { throw BenchFailure("\(notReconnected) of \(count) runtimes did not say hello to node B within 60 s") }

        // (2) The timers fire again: node B stops every runtime at its idle deadline.
        let stopped = await waitUntil(Double(latest.timeIntervalSinceNow) + 60, everyMs: 100) {
            ((try? await store.sessions(withRuntimeIn: [.starting, .running, .stopping]))?.count ?? 1) == 0
        }
        guard stopped else { throw BenchFailure("node B did not stop every runtime within 60 s of the last deadline") }
        let stops = try await IdleStops.collect(from: store)
        guard stops.idleStops == count else { throw BenchFailure("\(stops.idleStops) idle stops of \(count) runtimes (\(stops.otherStops) others)") }

        let params: [String: JSONValue] = [
            "nodes": "2 cloud-agent serve processes, one database",
            "runtimes": .number(Double(count)), "runtime": "real cloud-agent-runtime processes launched by node A (sandbox none), prompt `say ready`",
            "nodeHeartbeat": .string(Self.nodeHeartbeat), "nodeLease": .string(Self.nodeLease), "idleTimeoutMs": .number(Double(idleTimeoutMs)),
            "kill": .string("SIGKILL of node A, \(Self.killLeadMs) ms before the earliest idle deadline"),
            "deadlinesAfterKillMs": .object([
                "min": .number(Double(earliest.milliseconds(since: killed))), "max": .number(Double(latest.milliseconds(since: killed))),
            ]),
            "reconnect": .object(reconnects.summary), "reconnectFrom": "the kill to runtime.connectedAt recorded by node B's hello",
            "lag": .object(stops.lags.summary), "decisionLag": .object(stops.decisions.summary),
            "lagFrom": "idle deadline (last activity + idle timeout) to runtime.stoppedAt; decisionLag to the stop reason's time",
            "earlyStops": .number(Double(stops.early)),
        ]
        return [
            Figure("failover.reconnect_ms", reconnects.maxMs, unit: "ms (until every runtime said hello to node B)", params: params),
            Figure("failover.timer_lag_p50_ms", stops.lags.percentileMs(50), unit: "ms (stop past the idle deadline)", params: params),
            Figure("failover.timer_lag_max_ms", stops.lags.maxMs, unit: "ms (stop past the idle deadline)", params: params),
        ]
    }

    /// Node A killed, node B stopped, and any runtime still alive killed (their pids from the
    /// session records; node B stops them through their connections, so normally none is left).
    private func finish(a: ClusterNode.Child, b: ClusterNode.Child, reader: OpenedStore) async {
        a.killHard()
        await b.stop()
        let sessions = (try? await reader.store.sessions(withRuntimeIn: [.starting, .running, .stopping, .stopped])) ?? []
        for session in sessions {
            guard let pid = session.runtime.process?.pid,
                let command = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8), command.contains("cloud-agent-runtime")
            else { continue }
            kill(pid, SIGKILL)
        }
        await reader.close()
    }
}

extension BenchDatabases {
    /// Figures whose parameters name the store.
    func taggedFigures(_ figures: [Figure]) -> [Figure] {
        figures.map { figure in
            var figure = figure
            figure.params = tagged(figure.params)
            return figure
        }
    }
}
