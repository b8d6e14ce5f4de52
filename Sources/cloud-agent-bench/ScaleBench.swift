import ArgumentParser
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import PostgresNIO
#if canImport(Glibc)
    import Glibc
#endif

/// `scale`: a store holding many dormant sessions (stopped runtimes, one completed execution and
/// its events each, a durable wake-up each; `DormantSessions`), then a real `cloud-agent serve` child process:
/// start to ready (`/readyz`), its RSS once every wake-up is re-armed, GET latency of random
/// sessions, and its memory per active session (simulated runtimes, each with a running execution).
struct ScaleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale", abstract: "Start time, RSS and GET latency of a server with many dormant sessions."
    )

    @OptionGroup var options: BenchOptions
    @OptionGroup var backend: StoreOptions
    @Option(help: "Dormant sessions in the store (default: 100000, quick: 5000; on PostgreSQL 1000000, quick: 20000).") var sessions: Int?
    @Option(help: "Random GETs measured (default: 2000, quick: 200).") var gets: Int?
    @Option(help: "Active sessions for the memory-per-session figure (default: 1000, quick: 50).") var active: Int?

    func run() async throws {
        let figures = try await backend.withDatabases(note: options.note) { databases in try await measure(databases) }
        options.emit(figures)
    }

    private func measure(_ databases: BenchDatabases) async throws -> [Figure] {
        let count = sessions ?? (backend.onPostgres ? (options.quick ? 20_000 : 1_000_000) : (options.quick ? 5000 : 100_000))
        let gets = self.gets ?? (options.quick ? 200 : 2000)
        let active = self.active ?? (options.quick ? 50 : 1000)
        let serve = try Products.locate("cloud-agent", note: options.note)
        let scratch = try ScratchDirectory("scale")
        defer { scratch.remove() }
        let database = try await databases.fresh()
        let configuration = InProcessServer.configuration(directory: scratch.url, database: database)
        let dataDirectory = configuration.dataDirectory
        try FileManager.default.createDirectory(at: dataDirectory, withIntermediateDirectories: true)

        options.note("scale: inserting \(count) dormant sessions")
        let insertStart = ContinuousClock.now
        let ids: [SessionID]
        let databaseBytes: Int
        switch database {
        case .sqlite:
            let path = configuration.sqlitePath ?? dataDirectory.appendingPathComponent("cloud-agent.sqlite").path
            ids = try await DormantSessions.insert(count, path: path)
            databaseBytes =
                ((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0)
                + ((try? FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? NSNumber)?.intValue ?? 0)
        case .postgres(let postgres):
            // The schema by the store's own migrations, then the rows by COPY.
            await (try OpenedStore.open(configuration, logger: InProcessServer.logger(options.logLevel))).close()
            ids = try await DormantSessions.copy(count, into: postgres)
            databaseBytes = try await withPostgresClient(postgres) { client in
                try await client.query("SELECT pg_database_size(current_database())", logger: PostgresServer.logger).collect().first?.decode(Int.self) ?? 0
            }
        }
        let insertSeconds = Measure.seconds(since: insertStart)
        guard !ids.isEmpty else { throw BenchFailure("no dormant session was written") }
        options.note("scale: inserted in \(Figure.rounded(insertSeconds)) s (\(databaseBytes / 1_048_576) MB); starting cloud-agent serve")

        let log = scratch.url.appendingPathComponent("serve.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let child = Process()
        child.executableURL = serve
        child.arguments =
            [
                "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", dataDirectory.path, "--api-token", InProcessServer.token,
                "--sandbox", "none", "--log-level", "info",
            ] + (database.url.map { ["--database-url", $0] } ?? [])
        let output = try FileHandle(forWritingTo: log)
        child.standardOutput = output
        child.standardError = output
        let spawned = ContinuousClock.now
        try child.run()
        defer {
            if child.isRunning {
                kill(child.processIdentifier, SIGKILL)
                child.waitUntilExit()
            }
        }
        @Sendable func logText() -> String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

        // Start to ready: the port is printed once it listens; ready when /readyz answers 200.
        var port: Int?
        var startSeconds: Double?
        for _ in 0..<12_000 {
            guard child.isRunning else { throw BenchFailure("cloud-agent serve exited: \(logText().suffix(2000))") }
            if port == nil, let range = logText().range(of: "listening on http://127.0.0.1:") {
                port = Int(logText()[range.upperBound...].prefix { $0.isNumber })
            }
            if let port, await BenchAPI.status(of: "http://127.0.0.1:\(port)/readyz", timeoutMs: 500) == 200 {
                startSeconds = Measure.seconds(since: spawned)
                break
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        guard let port, let startSeconds else { throw BenchFailure("cloud-agent serve was not ready within 60 s: \(logText().suffix(2000))") }

        // RSS after start: once the scheduler's first refill armed the wake-ups due within its
        // window (the WakeUpScheduler logs it), plus a moment.
        let rearmed = await waitUntil(60, everyMs: 5) { logText().contains("wake-ups armed from the store") }
        let rearmedSeconds = Measure.seconds(since: spawned)
        try await Task.sleep(for: .milliseconds(500))
        guard let rssKB = Measure.residentKilobytes(pid: child.processIdentifier) else { throw BenchFailure("no VmRSS for the server") }

        // GET latency of random sessions.
        let api = BenchAPI(baseURL: "http://127.0.0.1:\(port)", token: InProcessServer.token)
        for id in ids.shuffled().prefix(50) { try await api.expect(200, .GET, "/v1/sessions/\(id)") }
        var latencies = Latencies()
        for _ in 0..<gets {
            let id = ids[Int.random(in: 0..<ids.count)]
            let start = Measure.monotonicNanos()
            try await api.expect(200, .GET, "/v1/sessions/\(id)")
            latencies.record(micros: (Measure.monotonicNanos() - start) / 1000)
        }

        // Memory per active session: simulated runtimes connected, each running an execution.
        let perActive = try await measureActive(active, port: port, pid: child.processIdentifier, configuration: configuration)

        kill(child.processIdentifier, SIGTERM)
        _ = await waitUntil(15, everyMs: 50) { !child.isRunning }

        let params: [String: JSONValue] = databases.tagged(
            [
                "dormantSessions": .number(Double(count)), "insertSeconds": .number(Figure.rounded(insertSeconds)),
                "databaseMB": .number(Figure.rounded(Double(databaseBytes) / 1_048_576)),
                "server": backend.onPostgres ? "cloud-agent serve (child process), PostgreSQL" : "cloud-agent serve (child process), SQLite",
                "wakeUpsRearmedLogged": .bool(rearmed), "wakeUpsRearmedSeconds": .number(Figure.rounded(rearmedSeconds)), "gets": .number(Double(gets)),
                "getLatency": .object(latencies.summary),
                "activeSessions": .number(Double(active)), "rssKBPerActiveSession": .number(Figure.rounded(perActive.perSessionKB)),
                "rssMBWithActiveSessions": .number(Figure.rounded(perActive.rssKB / 1024)),
                "startMeasured": "spawn → first 200 from /readyz (polled every 5 ms)",
            ].merging(
                backend.onPostgres
                    ? ["insertedBy": .string("COPY into the store's tables (batches of \(DormantSessions.batch) sessions, 2 connections), then ANALYZE")] : [:]
            ) { $1 })
        return [
            Figure(backend.name("scale.start_seconds"), startSeconds, unit: "s", params: params),
            Figure(backend.name("scale.rss_mb"), Double(rssKB) / 1024, unit: "MB", params: params),
            Figure(backend.name("scale.get_ms"), latencies.percentileMs(50), unit: "ms (p50)", params: params),
        ]
    }

    /// Connects `count` simulated runtimes (sessions inserted into the live database, as a launch
    /// leaves them) to the child server; returns its RSS growth per active session.
    private func measureActive(_ count: Int, port: Int, pid: Int32, configuration: ServerConfiguration) async throws -> (perSessionKB: Double, rssKB: Double) {
        guard count > 0 else { return (0, 0) }
        let opened = try await OpenedStore.open(configuration, logger: InProcessServer.logger(options.logLevel))
        let seats: [SimulatedRuntimeSeat]
        do {
            seats = try await SimulatedRuntimeSeat.insert(count, into: opened.store)
        } catch {
            await opened.close()
            throw error
        }
        await opened.close()
        let before = Double(Measure.residentKilobytes(pid: pid) ?? 0)
        let clients = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let logger = InProcessServer.logger(options.logLevel)
        let connected = Counter(), release = Gate()
        let url = "ws://127.0.0.1:\(port)/v1/runtime/connect"
        let tasks = seats.map { seat in
            Task {
                try await SimulatedRuntime.connect(url: url, seat: seat, eventLoopGroup: clients, logger: logger) { runtime in
                    try await runtime.send(runtime.heartbeatFrame())
                    connected.add(1)
                    await release.wait()
                }
            }
        }
        let all = await waitUntil(120, everyMs: 50) { connected.count >= count }
        try await Task.sleep(for: .milliseconds(500))
        let after = Double(Measure.residentKilobytes(pid: pid) ?? 0)
        release.open()
        for task in tasks { _ = try? await task.value }
        try? await clients.shutdownGracefully()
        guard all else { throw BenchFailure("only \(connected.count) of \(count) simulated runtimes connected") }
        return ((after - before) / Double(count), after)
    }
}
