import ArgumentParser
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import NIOHTTP1
#if canImport(Glibc)
    import Glibc
#endif

/// `idle`: (a) precision of the idle stop: many sessions with a short idle timeout whose
/// runtimes are an in-process simulation (`InProcessSimulatedRuntimeFleet`), stopped by the
/// real wake-up scheduler; the lag is stop time − idle deadline, from the stored stop reasons.
/// (b) no false kills: real `cloud-agent-runtime` processes whose executions stay silent for
/// twice the idle timeout; a runtime stopped while its execution was active is a false kill.
/// (c) the same precision while another session cold-starts slowly: a real session whose
/// restore runs a long setup command, started just before the simulated runtimes' deadlines
/// come due; its baseline is (a)'s lag, measured in the same run.
struct IdleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "idle", abstract: "Idle-stop precision (simulated runtimes) and false kills (real runtimes)."
    )

    @OptionGroup var options: BenchOptions
    @OptionGroup var backend: StoreOptions
    @Option(help: "Sessions for the precision part (default: 10000, quick: 300).") var sessions: Int?
    @Option(help: "Seconds over which their runtimes connect (default: 20, quick: 3).") var spread: Double?
    @Option(help: "Idle timeout of the precision part, ms (default: 5000, quick: 1000).") var idleTimeoutMs: Int64?
    @Option(help: "Real runtimes for the false-kill part (default: 200, quick: 5).") var runtimes: Int?
    @Option(help: "Idle timeout of the false-kill part, ms (default: 5000, quick: 2000).") var killIdleTimeoutMs: Int64?
    @Option(help: "Sandbox of the real runtimes: none, bwrap, auto.") var sandbox: String = "none"
    @Option(help: "Simulated sessions stopped during the slow cold start (default: 2000, quick: 200).") var coldStartSessions: Int?
    @Option(help: "Seconds the slow cold start's setup command runs (default: 10, quick: 4).") var coldStartSeconds: Int?

    func run() async throws {
        let figures = try await backend.withDatabases(note: options.note) { databases in
            let precision = try await measurePrecision(databases)
            let kills = try await measureFalseKills(databases)
            let baseline = precision.first { $0.name == backend.name("idle.stop_lag_max_ms") }?.value
            let underColdStart = try await measureUnderSlowColdStart(databases, baselineMaxMs: baseline)
            return precision + [kills] + underColdStart
        }
        options.emit(figures)
    }

    // MARK: (a) Precision

    func measurePrecision(_ databases: BenchDatabases) async throws -> [Figure] {
        let count = sessions ?? (options.quick ? 300 : 10_000)
        let spread = self.spread ?? (options.quick ? 3 : 20)
        let idleTimeout = idleTimeoutMs ?? (options.quick ? 1000 : 5000)
        let scratch = try ScratchDirectory("idle-precision")
        defer { scratch.remove() }
        let configuration = InProcessServer.configuration(directory: scratch.url, database: try await databases.fresh())
        let server = try await InProcessServer.start(configuration, logLevel: options.logLevel)
        options.note("idle (a): \(count) simulated runtimes connecting over \(spread) s, idle timeout \(idleTimeout) ms")
        do {
            let fleet = InProcessSimulatedRuntimeFleet(plane: server.plane, idleTimeoutMs: idleTimeout)
            try await fleet.connect(count, over: spread)
            let database = try RawDatabase.open(configuration)
            defer { database.close() }
            let settled = await waitUntil(Double(idleTimeout) / 1000 + 120, everyMs: 200) {
                let live = try? await database.count("SELECT COUNT(*) FROM sessions WHERE runtime_state IN ('starting', 'running', 'stopping')")
                return live == 0
            }
            guard settled else { throw BenchFailure("not every simulated runtime was stopped within the bound") }

            let stops = try await IdleStops.collect(from: server.plane.store)
            await server.stop()
            var params: [String: JSONValue] = [
                "sessions": .number(Double(count)), "connectSpreadSeconds": .number(spread), "idleTimeoutMs": .number(Double(idleTimeout)),
                "runtimes": "InProcessSimulatedRuntimeFleet (state set running through the store; the real WakeUpScheduler stops them)",
                "stopTime": "runtime.stoppedAt (the stop recorded, runtime.stopped emitted)",
                "idleStops": .number(Double(stops.idleStops)), "otherStops": .number(Double(stops.otherStops)),
                "earlyStops": .number(Double(stops.early)), "sessionsRead": .number(Double(stops.seen)), "lag": .object(stops.lags.summary),
                "decisionLag": .object(stops.decisions.summary), "resolution": "1 ms (stored timestamps)",
            ]
            params = databases.tagged(params)
            guard stops.idleStops > 0 else { throw BenchFailure("no idle stop was recorded") }
            return [
                Figure(backend.name("idle.stop_lag_p99_ms"), stops.lags.percentileMs(99), unit: "ms", params: params),
                Figure(backend.name("idle.stop_lag_max_ms"), stops.lags.maxMs, unit: "ms", params: params),
            ]
        } catch {
            await server.stop()
            throw error
        }
    }

    // MARK: (c) Precision during a slow cold start

    func measureUnderSlowColdStart(_ databases: BenchDatabases, baselineMaxMs: Double?) async throws -> [Figure] {
        let count = coldStartSessions ?? (options.quick ? 200 : 2000)
        let setupSeconds = coldStartSeconds ?? (options.quick ? 4 : 10)
        let idleTimeout: Int64 = 1000
        let runtime = try Products.locate("cloud-agent-runtime", note: options.note)
        let scratch = try ScratchDirectory("idle-cold-start")
        defer { scratch.remove() }
        let timing = Timing(idleTimeoutMs: idleTimeout, heartbeatIntervalMs: 1000, staleThresholdMs: 10_000, pendingTimeoutMs: 300_000, stopGraceMs: 2000)
        let configuration = InProcessServer.configuration(
            directory: scratch.url, database: try await databases.fresh(), timing: timing, maxRuntimes: count + 8, runtime: runtime
        )
        let server = try await InProcessServer.start(configuration, logLevel: options.logLevel)
        let api = BenchAPI(baseURL: server.baseURL, token: InProcessServer.token)
        options.note("idle (c): \(count) simulated runtimes stopped while another session's restore runs a \(setupSeconds) s setup command")
        do {
            // The slow session: its setup command is quick when prepared, slow on every restore.
            let setup = "if [ -f \"$HOME/.prepared\" ]; then sleep \(setupSeconds); fi; touch \"$HOME/.prepared\""
            let created = try await api.expect(201, .POST, "/v1/sessions", json: ["prompt": "say first", "setupCommands": [.string(setup)]])
            guard let slow = created["sessionId"]?.stringValue.flatMap(SessionID.init(rawValue:)) else { throw BenchFailure("no sessionId") }
            try await api.expect(202, .POST, "/v1/sessions/\(slow)/initiate")
            let store = server.plane.store
            guard await waitUntil(30, everyMs: 50, { (try? await store.session(slow))?.runtime.state == .stopped }) else {
                throw BenchFailure("the slow session's first runtime did not stop")
            }
            // Its cold start begins; the simulated runtimes connect over the next second, so that
            // all their deadlines come due while the restore runs.
            try await api.expect(202, .POST, "/v1/sessions/\(slow)/messages", json: ["prompt": "say after the cold start"])
            let coldStartBegan = Date()
            let fleet = InProcessSimulatedRuntimeFleet(plane: server.plane, idleTimeoutMs: idleTimeout)
            try await fleet.connect(count, over: 1)
            let simulatedLive = { @Sendable () async -> Int in
                ((try? await store.sessions(withRuntimeIn: [.starting, .running, .stopping]))?.filter { $0.id != slow }.count) ?? 1
            }
            guard await waitUntil(Double(idleTimeout) / 1000 + 60, everyMs: 50, { await simulatedLive() == 0 }) else {
                throw BenchFailure("not every simulated runtime was stopped within the bound")
            }
            let allStoppedAfter = Date().timeIntervalSince(coldStartBegan)
            let slowState = try await store.session(slow)?.runtime.state
            // The cold start ended when its runtime started (it may have run its message and
            // been stopped as idle since: on PostgreSQL the simulated stops can outlast it).
            let startedAfterColdStart = { @Sendable () async -> Date? in
                guard let started = try? await store.session(slow)?.runtime.startedAt, started >= coldStartBegan.truncatedToMilliseconds else { return nil }
                return started
            }
            guard await waitUntil(Double(setupSeconds) + 60, everyMs: 100, { await startedAfterColdStart() != nil }),
                let slowStarted = await startedAfterColdStart()
            else {
                let runtime = try? await store.session(slow)?.runtime
                let events = (try? await store.events(of: slow, EventQuery(afterId: 0, limit: 1000))) ?? []
                let last = events.suffix(6).map { "\($0.type) \(JSONText.encode($0.data).prefix(300))" }.joined(separator: "; ")
                throw BenchFailure("the slow cold start did not end with a running runtime: state \(runtime?.state.rawValue ?? "?"), last events: \(last)")
            }
            let coldStartSeconds = slowStarted.timeIntervalSince(coldStartBegan)
            let stops = try await IdleStops.collect(from: store, excluding: [slow])
            await server.plane.killRuntimes()
            await server.stop()
            guard stops.idleStops > 0 else { throw BenchFailure("no idle stop was recorded") }
            var params: [String: JSONValue] = [
                "sessions": .number(Double(count)), "idleTimeoutMs": .number(Double(idleTimeout)), "setupCommandSeconds": .number(Double(setupSeconds)),
                "slowColdStartSeconds": .number(Figure.rounded(coldStartSeconds)),
                "lastSimulatedStopAfterSeconds": .number(Figure.rounded(allStoppedAfter)),
                "slowSessionStateWhenAllWereStopped": .string(slowState?.rawValue ?? "?"),
                "idleStops": .number(Double(stops.idleStops)), "otherStops": .number(Double(stops.otherStops)), "earlyStops": .number(Double(stops.early)),
                "lag": .object(stops.lags.summary), "decisionLag": .object(stops.decisions.summary),
                "baseline": "idle.stop_lag_max_ms of (a), the same scheduler without a cold start, in this run",
            ]
            params = databases.tagged(params)
            return [
                Figure(backend.name("idle.stop_lag_p99_ms_during_slow_cold_start"), stops.lags.percentileMs(99), unit: "ms", params: params),
                Figure(backend.name("idle.stop_lag_max_ms_during_slow_cold_start"), stops.lags.maxMs, unit: "ms", baseline: baselineMaxMs, params: params),
            ]
        } catch {
            await server.plane.killRuntimes()
            await server.stop()
            throw error
        }
    }

    // MARK: (b) False kills

    func measureFalseKills(_ databases: BenchDatabases) async throws -> Figure {
        let count = runtimes ?? (options.quick ? 5 : 200)
        let idleTimeout = killIdleTimeoutMs ?? (options.quick ? 2000 : 5000)
        let silenceMs = 2 * idleTimeout
        guard let sandboxMode = SandboxMode(rawValue: sandbox) else { throw BenchFailure("unknown sandbox \(sandbox)") }
        let runtime = try Products.locate("cloud-agent-runtime", note: options.note)
        let scratch = try ScratchDirectory("idle-kills")
        defer { scratch.remove() }
        let timing = Timing(idleTimeoutMs: idleTimeout, heartbeatIntervalMs: 1000, staleThresholdMs: 10_000, pendingTimeoutMs: 300_000, stopGraceMs: 2000)
        let configuration = InProcessServer.configuration(
            directory: scratch.url, database: try await databases.fresh(), timing: timing, maxRuntimes: count + 8, sandbox: sandboxMode, runtime: runtime
        )
        let server = try await InProcessServer.start(configuration, logLevel: options.logLevel)
        let api = BenchAPI(baseURL: server.baseURL, token: InProcessServer.token)
        options.note("idle (b): \(count) real runtimes, executions silent for \(silenceMs) ms, idle timeout \(idleTimeout) ms")
        let prompt = "say start\nsleep \(Double(silenceMs) / 1000)\nsay done"
        do {
            // Create and initiate at once: a pending execution keeps its runtime busy from the start.
            let ids = try await withThrowingTaskGroup(of: [SessionID].self) { group in
                let workers = min(8, count)
                for worker in 0..<workers {
                    let share = count / workers + (worker < count % workers ? 1 : 0)
                    group.addTask {
                        var ids: [SessionID] = []
                        for _ in 0..<share {
                            let created = try await api.expect(201, .POST, "/v1/sessions", json: ["prompt": .string(prompt)])
                            guard let id = created["sessionId"]?.stringValue.flatMap(SessionID.init(rawValue:)) else { throw BenchFailure("no sessionId") }
                            try await api.expect(202, .POST, "/v1/sessions/\(id)/initiate")
                            ids.append(id)
                        }
                        return ids
                    }
                }
                var all: [SessionID] = []
                for try await ids in group { all += ids }
                return all
            }
            let store = server.plane.store
            let ended = await waitUntil(Double(silenceMs) / 1000 + 180, everyMs: 500) {
                for id in ids {
                    guard let session = try? await store.session(id), session.activeExecutionId == nil else { return false }
                }
                return true
            }
            guard ended else { throw BenchFailure("the executions did not all end in time") }

            var falseKills = 0, completed = 0, staleFailures = 0, otherOutcomes = 0
            var minSilenceMs = Int64.max
            for id in ids {
                let events = try await store.events(of: id, EventQuery(afterId: 0, limit: 1000))
                let terminal = events.firstIndex {
                    [EventType.executionCompleted, EventType.executionFailed, EventType.executionInterrupted].contains($0.type)
                }
                let stop = events.firstIndex { $0.type == EventType.runtimeStopped }
                if let stop, terminal.map({ stop < $0 }) ?? true { falseKills += 1 }
                if let terminal {
                    switch events[terminal].type {
                    case EventType.executionCompleted: completed += 1
                    case EventType.executionFailed where (events[terminal].data["error"]?.stringValue ?? "").contains("heartbeat"): staleFailures += 1
                    default: otherOutcomes += 1
                    }
                }
                let texts = events.filter { $0.type == EventType.agent }
                if let start = texts.first(where: { $0.data["text"]?.stringValue == "start" }),
                    let done = texts.first(where: { $0.data["text"]?.stringValue == "done" })
                {
                    minSilenceMs = min(minSilenceMs, done.at.milliseconds(since: start.at))
                }
            }
            // Then idle cleanup does stop them (bounded).
            _ = await waitUntil(Double(idleTimeout) / 1000 + 30, everyMs: 250) {
                ((try? await store.sessions(withRuntimeIn: [.starting, .running, .stopping]))?.count ?? 1) == 0
            }
            var idleStopsAfter = 0
            for id in ids where (try? await store.session(id))?.runtime.stopReason?.rule == .idle { idleStopsAfter += 1 }
            await server.plane.killRuntimes()
            await server.stop()
            let params: [String: JSONValue] = [
                "runtimes": .number(Double(count)), "idleTimeoutMs": .number(Double(idleTimeout)), "silenceMs": .number(Double(silenceMs)),
                "heartbeatIntervalMs": .number(Double(timing.heartbeatIntervalMs)), "staleThresholdMs": .number(Double(timing.staleThresholdMs)),
                "completed": .number(Double(completed)), "staleFailures": .number(Double(staleFailures)), "otherOutcomes": .number(Double(otherOutcomes)),
                "minObservedSilenceMs": .number(Double(minSilenceMs == .max ? 0 : minSilenceMs)),
                "idleStoppedAfterCompletion": .number(Double(idleStopsAfter)), "sandbox": .string(sandbox),
                "prompt": .string(prompt.replacingOccurrences(of: "\n", with: " / ")),
            ]
            return Figure(backend.name("idle.false_kills"), Double(falseKills), unit: "runtimes", params: databases.tagged(params))
        } catch {
            await server.plane.killRuntimes()
            await server.stop()
            throw error
        }
    }
}

/// The idle stops a benchmark's store recorded: lag = `runtime.stoppedAt` − idle deadline, and
/// the decision's lag (the stop reason's `at`).
struct IdleStops {
    var lags = Latencies(), decisions = Latencies()
    var idleStops = 0, otherStops = 0, early = 0, seen = 0

    static func collect(from store: any SessionStore, excluding excluded: Set<SessionID> = []) async throws -> IdleStops {
        var stops = IdleStops()
        var cursor: SessionCursor?
        for _ in 0..<10_000 {
            let page = try await store.sessions(owner: .local, limit: 200, after: cursor)
            for session in page where !excluded.contains(session.id) {
                stops.seen += 1
                guard let reason = session.runtime.stopReason, reason.rule == .idle, let last = reason.lastActivityAt,
                    let timeout = reason.idleTimeoutMs, let stoppedAt = session.runtime.stoppedAt
                else {
                    stops.otherStops += 1
                    continue
                }
                stops.idleStops += 1
                let deadline = last.adding(milliseconds: timeout)
                let lag = stoppedAt.milliseconds(since: deadline), decided = reason.at.milliseconds(since: deadline)
                if lag < 0 || decided < 0 { stops.early += 1 }
                stops.lags.record(micros: UInt64(max(0, lag)) * 1000)
                stops.decisions.record(micros: UInt64(max(0, decided)) * 1000)
            }
            guard let last = page.last, page.count == 200 else { break }
            cursor = SessionCursor(after: last)
        }
        return stops
    }
}

/// The runtimes of the precision part, simulated in this process: connecting a runtime is
/// recording it `running` (as `runtimeHello` does) through the store and poking the scheduler.
/// There is no process and no WebSocket, so that the figure is the scheduler's alone.
struct InProcessSimulatedRuntimeFleet {
    let plane: ControlPlane
    let idleTimeoutMs: Int64

    /// Connects `count` runtimes at a steady pace over `seconds`.
    func connect(_ count: Int, over seconds: Double) async throws {
        let start = ContinuousClock.now
        let interval = seconds / Double(max(1, count))
        let workers = 4
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask {
                    for index in stride(from: worker, to: count, by: workers) {
                        let due = start + .milliseconds(Int(Double(index) * interval * 1000))
                        if due > .now { try await Task.sleep(until: due) }
                        try await connectOne()
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    private func connectOne() async throws {
        let now = Date().truncatedToMilliseconds
        let id = SessionID()
        var session = SessionRecord(
            id: id, owner: .local, createdAt: now, spec: SessionSpec(prompt: "simulated", idleTimeoutMs: idleTimeoutMs),
            workBranch: "session/\(id.rawValue)"
        )
        session.runtime = .running(
            RuntimeStatus.Running(startedAt: now, requestedAt: now, cold: false, instanceId: UUID().uuidString.lowercased(), connectedAt: now))
        try await plane.store.insertSession(session)
        await plane.scheduler.poke(id)
    }
}
