import ArgumentParser
import CloudAgentCore
import CloudAgentSQLite
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// `scale`: a store holding many dormant sessions (stopped runtimes, one completed execution and
/// its events each, a durable wake-up each), then a real `cloud-agent serve` child process:
/// start to ready (`/readyz`), its RSS once every wake-up is re-armed, GET latency of random
/// sessions, and its memory per active session (simulated runtimes, each with a running execution).
struct ScaleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale", abstract: "Start time, RSS and GET latency of a server with many dormant sessions."
    )

    @OptionGroup var options: BenchOptions
    @Option(help: "Dormant sessions in the store (default: 100000, quick: 5000).") var sessions: Int?
    @Option(help: "Random GETs measured (default: 2000, quick: 200).") var gets: Int?
    @Option(help: "Active sessions for the memory-per-session figure (default: 1000, quick: 50).") var active: Int?

    func run() async throws {
        let count = sessions ?? (options.quick ? 5000 : 100_000)
        let gets = self.gets ?? (options.quick ? 200 : 2000)
        let active = self.active ?? (options.quick ? 50 : 1000)
        let serve = try Products.locate("cloud-agent", note: options.note)
        let scratch = try ScratchDirectory("scale")
        defer { scratch.remove() }
        let dataDirectory = scratch.url.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: dataDirectory, withIntermediateDirectories: true)
        let databasePath = dataDirectory.appendingPathComponent("cloud-agent.sqlite").path

        options.note("scale: inserting \(count) dormant sessions")
        let insertStart = ContinuousClock.now
        let ids = try await DormantSessions.insert(count, path: databasePath)
        let insertSeconds = Measure.seconds(since: insertStart)
        let databaseBytes = ((try? FileManager.default.attributesOfItem(atPath: databasePath)[.size] as? NSNumber)?.intValue ?? 0)
            + ((try? FileManager.default.attributesOfItem(atPath: databasePath + "-wal")[.size] as? NSNumber)?.intValue ?? 0)
        options.note("scale: inserted in \(Figure.rounded(insertSeconds)) s; starting cloud-agent serve")

        let log = scratch.url.appendingPathComponent("serve.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let child = Process()
        child.executableURL = serve
        child.arguments = [
            "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", dataDirectory.path, "--api-token", InProcessServer.token,
            "--sandbox", "none", "--log-level", "info",
        ]
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

        // RSS after start: once every wake-up is re-armed, plus a moment.
        let rearmed = await waitUntil(60, everyMs: 5) { logText().contains("wake-ups re-armed from the store") }
        let rearmedSeconds = Measure.seconds(since: spawned)
        try await Task.sleep(for: .milliseconds(500))
        guard let rssKB = Measure.residentKilobytes(pid: child.processIdentifier) else { throw BenchFailure("no VmRSS for the server") }

        // GET latency of random sessions.
        let api = BenchAPI(baseURL: "http://127.0.0.1:\(port)", token: InProcessServer.token)
        for id in ids.shuffled().prefix(50) { try await api.expect(200, .GET, "/v1/sessions/\(id)") }
        var latencies = Latencies()
        for _ in 0..<gets {
            let id = ids.randomElement()!
            let start = Measure.monotonicNanos()
            try await api.expect(200, .GET, "/v1/sessions/\(id)")
            latencies.record(micros: (Measure.monotonicNanos() - start) / 1000)
        }

        // Memory per active session: simulated runtimes connected, each running an execution.
        let perActive = try await measureActive(active, port: port, pid: child.processIdentifier, databasePath: databasePath)

        kill(child.processIdentifier, SIGTERM)
        _ = await waitUntil(15, everyMs: 50) { !child.isRunning }

        let params: [String: JSONValue] = [
            "dormantSessions": .number(Double(count)), "insertSeconds": .number(Figure.rounded(insertSeconds)),
            "databaseMB": .number(Figure.rounded(Double(databaseBytes) / 1_048_576)), "server": "cloud-agent serve (child process), SQLite",
            "wakeUpsRearmedLogged": .bool(rearmed), "wakeUpsRearmedSeconds": .number(Figure.rounded(rearmedSeconds)), "gets": .number(Double(gets)), "getLatency": .object(latencies.summary),
            "activeSessions": .number(Double(active)), "rssKBPerActiveSession": .number(Figure.rounded(perActive.perSessionKB)),
            "rssMBWithActiveSessions": .number(Figure.rounded(perActive.rssKB / 1024)),
            "startMeasured": "spawn → first 200 from /readyz (polled every 5 ms)",
        ]
        options.emit([
            Figure("scale.start_seconds", startSeconds, unit: "s", params: params),
            Figure("scale.rss_mb", Double(rssKB) / 1024, unit: "MB", params: params),
            Figure("scale.get_ms", latencies.percentileMs(50), unit: "ms (p50)", params: params),
        ])
    }

    /// Connects `count` simulated runtimes (sessions inserted into the live database, as a launch
    /// leaves them) to the child server; returns its RSS growth per active session.
    private func measureActive(_ count: Int, port: Int, pid: Int32, databasePath: String) async throws -> (perSessionKB: Double, rssKB: Double) {
        guard count > 0 else { return (0, 0) }
        let store = try SQLiteSessionStore(path: databasePath)
        let seats = try await SimulatedRuntimeSeat.insert(count, into: store)
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

/// Dormant sessions written straight into a database (through the store, so that every row is
/// what the product writes): stopped by the idle rule weeks ago, one completed execution with
/// its events, and the durable wake-up the rules give them (TTL or event retention).
enum DormantSessions {
    static func insert(_ count: Int, path: String) async throws -> [SessionID] {
        let store = try SQLiteSessionStore(path: path)
        let timing = Timing()
        return try await withThrowingTaskGroup(of: [SessionID].self) { group in
            let workers = 8
            for worker in 0..<workers {
                group.addTask {
                    var ids: [SessionID] = []
                    for index in stride(from: worker, to: count, by: workers) {
                        ids.append(try await insertOne(index, into: store, timing: timing))
                    }
                    return ids
                }
            }
            var all: [SessionID] = []
            for try await ids in group { all += ids }
            return all
        }
    }

    private static func insertOne(_ index: Int, into store: SQLiteSessionStore, timing: Timing) async throws -> SessionID {
        let now = Date().truncatedToMilliseconds
        let created = now.adding(milliseconds: -Int64.random(in: 3_600_000...(30 * 86_400_000)))
        let started = created.adding(milliseconds: 1200)
        let completed = started.adding(milliseconds: Int64.random(in: 5_000...600_000))
        let stopped = completed.adding(milliseconds: timing.idleTimeoutMs + 40)
        let id = SessionID()
        let prompt = "dormant session \(index): summarize the repository and open a pull request"
        var session = SessionRecord(id: id, owner: .local, createdAt: created, spec: SessionSpec(prompt: prompt), workBranch: "session/\(id.rawValue)")
        session.initiatedAt = created
        session.executionCount = 1
        session.updatedAt = stopped
        let reason = StopReason(
            rule: .idle, at: stopped, lastActivityAt: completed, idleMs: stopped.milliseconds(since: completed),
            idleTimeoutMs: timing.idleTimeoutMs, detail: "no activity for \(stopped.milliseconds(since: completed)) ms (since executionEnd)"
        )
        session.runtime = RuntimeStatus(state: .stopped, startedAt: started, requestedAt: created, stoppedAt: stopped, stopReason: reason)
        var execution = Execution(id: ExecutionID(at: created), sessionId: id, prompt: prompt, acceptedAt: created)
        try execution.markRunning(at: started.adding(milliseconds: 30))
        execution.recordProgress(at: completed, events: 1)
        try execution.end(.completed, at: completed, exitCode: 0, reportedByRuntime: true)
        let events = [
            NewEvent(executionId: execution.id, type: EventType.executionStarted, at: created, data: ["prompt": .string(prompt), "followUp": false]),
            NewEvent(type: EventType.runtimeStarted, at: started, data: ["cold": false]),
            NewEvent(executionId: execution.id, type: EventType.executionRunning, at: started.adding(milliseconds: 30)),
            NewEvent(executionId: execution.id, type: EventType.agent, at: completed, data: ["kind": "text", "text": "done: opened the pull request"]),
            NewEvent(executionId: execution.id, type: EventType.executionCompleted, at: completed, data: ["exitCode": 0]),
            NewEvent(type: EventType.runtimeStopped, at: stopped, data: [
                "rule": "idle", "lastActivityAt": JSONValue(completed), "idleMs": JSONValue(reason.idleMs), "idleTimeoutMs": JSONValue(timing.idleTimeoutMs),
            ]),
        ]
        let wakeUp = SessionRules.evaluate(
            SessionSnapshot(session: session, latestExecution: execution, oldestEventAt: created), timing: timing, controlPlaneStartedAt: now, now: now
        ).nextWakeUp
        try await store.insertSession(session)
        _ = try await store.commit(SessionChange(sessionId: id, newExecution: execution, events: events, wakeUp: .some(wakeUp)))
        return id
    }
}
