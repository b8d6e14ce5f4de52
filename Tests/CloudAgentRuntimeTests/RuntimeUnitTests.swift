import CloudAgentTestSupport
import CloudAgentAgents
import CloudAgentProtocol
import CloudAgentRuntime
import Foundation
import Logging
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@Suite("Event outbox")
struct EventOutboxTests {
    let at = Date(timeIntervalSince1970: 1_790_000_000)

    @Test func numbersEventsFromOneRisingByOne() {
        var outbox = EventOutbox()
        #expect(outbox.lastSeq == 0)
        let seqs = (0..<5).map { index in outbox.append(executionId: "exc_1", kind: RuntimeEvent.Kind.agent, at: at, data: ["i": .number(Double(index))]).seq }
        #expect(seqs == [1, 2, 3, 4, 5])
        #expect(outbox.lastSeq == 5)
        #expect(outbox.pending.map(\.seq) == [1, 2, 3, 4, 5])
    }

    @Test func anAcknowledgementDropsEverythingUpToIt() {
        var outbox = EventOutbox()
        for _ in 0..<5 { _ = outbox.append(executionId: "exc_1", kind: RuntimeEvent.Kind.output, at: at, data: [:]) }
        outbox.acknowledge(upTo: 3)
        #expect(outbox.pending.map(\.seq) == [4, 5])
        #expect(outbox.acknowledgedSeq == 3)
        // Older or repeated acknowledgements change nothing.
        outbox.acknowledge(upTo: 2)
        outbox.acknowledge(upTo: 3)
        #expect(outbox.pending.map(\.seq) == [4, 5])
        outbox.acknowledge(upTo: 5)
        #expect(outbox.isEmpty)
        // Numbering goes on after the outbox empties.
        #expect(outbox.append(executionId: "exc_2", kind: RuntimeEvent.Kind.running, at: at, data: [:]).seq == 6)
    }

    @Test func whatIsLeftIsResentInOrder() {
        var outbox = EventOutbox()
        for index in 1...10 { _ = outbox.append(executionId: "exc_1", kind: RuntimeEvent.Kind.agent, at: at, data: ["text": .string("line \(index)")]) }
        outbox.acknowledge(upTo: 4)
        #expect(outbox.pending.map(\.seq) == Array(5...10))
        let resent = outbox.pending.compactMap { entry -> RuntimeEvent? in
            if case .event(let event) = try? ProtocolCoding.decodeRuntimeMessage(entry.frame) { event } else { nil }
        }
        #expect(resent.map(\.seq) == Array(5...10))
        #expect(resent.map { $0.data["text"]?.stringValue } == (5...10).map { "line \($0)" })
    }

    @Test func itCountsTheBytesOfItsFramesAndIsFullAtItsBound() {
        var outbox = EventOutbox(limitBytes: 1000)
        #expect(!outbox.isFull && outbox.pendingBytes == 0)
        var sizes: [Int] = []
        while !outbox.isFull {
            let entry = outbox.append(executionId: "exc_1", kind: RuntimeEvent.Kind.output, at: at, data: ["line": .string(String(repeating: "x", count: 100))])
            sizes.append(entry.frame.utf8.count)
            #expect(outbox.pendingBytes == sizes.reduce(0, +))
        }
        // Full at the bound, and over it by less than one event: appending is never refused, the
        // runtime stops adding agent output once it is full.
        #expect(outbox.pendingBytes >= 1000 && outbox.pendingBytes < 1000 + sizes.max()!)
        outbox.acknowledge(upTo: 2)
        #expect(outbox.pendingBytes == sizes.dropFirst(2).reduce(0, +))
        #expect(!outbox.isFull)
        outbox.acknowledge(upTo: outbox.lastSeq)
        #expect(outbox.pendingBytes == 0 && outbox.isEmpty)
        #expect(EventOutbox().limitBytes == 64 << 20)
    }

    @Test func anAcknowledgementBeyondTheLastEventEmptiesIt() {
        var outbox = EventOutbox()
        _ = outbox.append(executionId: "exc_1", kind: RuntimeEvent.Kind.agent, at: at, data: [:])
        outbox.acknowledge(upTo: 99)
        #expect(outbox.isEmpty)
        #expect(outbox.acknowledgedSeq == 1)
        #expect(outbox.append(executionId: "exc_1", kind: RuntimeEvent.Kind.agent, at: at, data: [:]).seq == 2)
    }
}

@Suite("Reconnect backoff")
struct ReconnectBackoffTests {
    @Test func doublesFrom100MillisecondsUpTo2Seconds() {
        let backoff = ReconnectBackoff()
        #expect(
            (0..<8).map { backoff.ceiling(forAttempt: $0) } == [
                .milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800),
                .milliseconds(1600), .seconds(2), .seconds(2), .seconds(2),
            ])
        #expect(backoff.ceiling(forAttempt: 10_000) == .seconds(2))
    }

    @Test func jitterStaysInTheUpperHalfOfEachStep() {
        var backoff = ReconnectBackoff()
        var generator = SplitMix64(seed: 7)
        for attempt in 0..<50 {
            let ceiling = backoff.ceiling(forAttempt: attempt)
            let delay = backoff.nextDelay(using: &generator)
            #expect(delay <= ceiling)
            #expect(delay >= ceiling / 2)
        }
        backoff.reset()
        #expect(backoff.attempts == 0)
        #expect(backoff.nextDelay(using: &generator) <= .milliseconds(100))
    }
}

@Suite("Agent output")
struct AgentOutputTests {
    @Test func splitsLinesAcrossChunks() {
        var splitter = LineSplitter()
        #expect(splitter.append(Array("hel".utf8)) == [])
        #expect(splitter.append(Array("lo\r\nwor".utf8)) == ["hello"])
        #expect(splitter.append(Array("ld\n\n".utf8)) == ["world", ""])
        #expect(splitter.append(Array("tail".utf8)) == [])
        #expect(splitter.finish() == "tail")
        #expect(splitter.finish() == nil)
    }

    @Test func cutsOverlongLines() {
        var splitter = LineSplitter(maxLineBytes: 4)
        #expect(splitter.append(Array("abcdefghij\n".utf8)) == ["abcd", "efgh", "ij"])
    }

    @Test func keepsUnicodeLineSeparatorsInsideALine() {
        var splitter = LineSplitter()
        #expect(splitter.append(Array("a\u{2028}b\u{85}c\n".utf8)) == ["a\u{2028}b\u{85}c"])
    }

    @Test func normalizesTheScriptedAgentsEvents() throws {
        let text = #"{"type":"text","text":"hi"}"#
        #expect(AgentEventNormalizer.agentEventData(fromLine: text) == ["kind": .string("text"), "text": .string("hi"), "raw": .string(text)])

        let tool = #"{"type":"tool","name":"run","input":"false","exitCode":1,"status":"error","output":""}"#
        #expect(
            AgentEventNormalizer.agentEventData(fromLine: tool) == [
                "kind": .string("tool"), "name": .string("run"), "input": .string("false"), "exitCode": .number(1),
                "status": .string("error"), "output": .string(""), "raw": .string(tool),
            ])

        let write = #"{"type":"tool","name":"write","input":"a.txt","status":"ok","output":"wrote 3 bytes"}"#
        let writeData = try #require(AgentEventNormalizer.agentEventData(fromLine: write))
        #expect(writeData["exitCode"] == nil)
        #expect(writeData["output"] == .string("wrote 3 bytes"))

        let error = #"{"type":"error","message":"write: path escapes the workspace: ../x"}"#
        #expect(
            AgentEventNormalizer.agentEventData(fromLine: error) == [
                "kind": .string("error"), "message": .string("write: path escapes the workspace: ../x"), "raw": .string(error),
            ])

        let log = #"{"type":"log","message":"thinking"}"#
        #expect(AgentEventNormalizer.agentEventData(fromLine: log) == ["kind": .string("log"), "message": .string("thinking"), "raw": .string(log)])

        let other = #"{"event":"something else"}"#
        #expect(AgentEventNormalizer.agentEventData(fromLine: other) == ["kind": .string("log"), "message": .string(other), "raw": .string(other)])
    }

    @Test(arguments: ["plain words", "", "[1,2]", "\"a string\"", "42", "{not json", "{\"type\":\"text\""])
    func otherLinesAreNotAgentEvents(_ line: String) {
        #expect(AgentEventNormalizer.agentEventData(fromLine: line) == nil)
    }
}

@Suite("Runtime configuration")
struct RuntimeConfigurationTests {
    let base = [
        "CLOUD_AGENT_CONTROL_URL": "ws://127.0.0.1:8787/v1/runtime/connect",
        "SESSION_ID": "agent_1",
        "CLOUD_AGENT_RUNTIME_ID": "rt_1",
    ]

    @Test func readsTheEnvironmentWithDefaults() throws {
        let configuration = try RuntimeConfiguration(environment: base, currentDirectory: "/work/here")
        #expect(
            configuration
                == RuntimeConfiguration(
                    controlURL: "ws://127.0.0.1:8787/v1/runtime/connect", sessionId: "agent_1", runtimeId: "rt_1",
                    workspace: "/work/here", logLevel: .info, stopGrace: .seconds(10)
                ))
        var environment = base
        environment["CLOUD_AGENT_WORKSPACE"] = "/ws"
        environment["CLOUD_AGENT_LOG_LEVEL"] = "debug"
        environment["CLOUD_AGENT_STOP_GRACE_MS"] = "2500"
        let configured = try RuntimeConfiguration(environment: environment, currentDirectory: "/work/here")
        #expect(configured.workspace == "/ws")
        #expect(configured.logLevel == .debug)
        #expect(configured.stopGrace == .milliseconds(2500))
        #expect(configuration.idleTimeout == .seconds(900))
        #expect(configuration.orphanLimit == .seconds(3600))
        #expect(configuration.outboxLimitBytes == 64 << 20)
        #expect(configuration.connectTimeout == .zero)
        environment["CLOUD_AGENT_IDLE_TIMEOUT_MS"] = "1500"
        environment["CLOUD_AGENT_CONNECT_TIMEOUT_MS"] = "30000"
        environment["CLOUD_AGENT_ORPHAN_LIMIT_MS"] = "2000"
        environment["CLOUD_AGENT_OUTBOX_LIMIT_BYTES"] = "4096"
        let withLimits = try RuntimeConfiguration(environment: environment, currentDirectory: "/work/here")
        #expect(withLimits.idleTimeout == .milliseconds(1500))
        #expect(withLimits.orphanLimit == .milliseconds(2000))
        #expect(withLimits.outboxLimitBytes == 4096)
        #expect(withLimits.connectTimeout == .seconds(30))
    }

    @Test(arguments: ["CLOUD_AGENT_CONTROL_URL", "SESSION_ID", "CLOUD_AGENT_RUNTIME_ID"])
    func aMissingSettingIsAnError(_ name: String) {
        var environment = base
        environment[name] = nil
        #expect(throws: RuntimeConfigurationError.self) { try RuntimeConfiguration(environment: environment, currentDirectory: "/") }
    }

    @Test func malformedSettingsAreErrors() {
        let malformed = [
            ("CLOUD_AGENT_CONTROL_URL", "http://x"), ("CLOUD_AGENT_LOG_LEVEL", "loud"), ("CLOUD_AGENT_STOP_GRACE_MS", "10s"),
            ("CLOUD_AGENT_IDLE_TIMEOUT_MS", "0"), ("CLOUD_AGENT_IDLE_TIMEOUT_MS", "15m"), ("CLOUD_AGENT_ORPHAN_LIMIT_MS", "-5"),
            ("CLOUD_AGENT_ORPHAN_LIMIT_MS", "1h"), ("CLOUD_AGENT_OUTBOX_LIMIT_BYTES", "0"), ("CLOUD_AGENT_OUTBOX_LIMIT_BYTES", "64MiB"),
            ("CLOUD_AGENT_CONNECT_TIMEOUT_MS", "-1"), ("CLOUD_AGENT_CONNECT_TIMEOUT_MS", "2m"),
        ]
        for (name, value) in malformed {
            var environment = base
            environment[name] = value
            #expect(throws: RuntimeConfigurationError.self) { try RuntimeConfiguration(environment: environment, currentDirectory: "/") }
        }
    }

    @Test func controlURLsNameEveryNodeAfterTheFirst() throws {
        #expect(try RuntimeConfiguration(environment: base, currentDirectory: "/").controlURLs == ["ws://127.0.0.1:8787/v1/runtime/connect"])
        var environment = base
        environment["CLOUD_AGENT_CONTROL_URLS"] =
            "ws://10.0.0.2:8787/v1/runtime/connect, ws://127.0.0.1:8787/v1/runtime/connect,,wss://node-3/v1/runtime/connect"
        let configuration = try RuntimeConfiguration(environment: environment, currentDirectory: "/")
        #expect(configuration.controlURL == "ws://127.0.0.1:8787/v1/runtime/connect")
        #expect(
            configuration.controlURLs == [
                "ws://127.0.0.1:8787/v1/runtime/connect", "ws://10.0.0.2:8787/v1/runtime/connect", "wss://node-3/v1/runtime/connect",
            ])
        for bad in ["http://10.0.0.2:8787/v1/runtime/connect", "ws://10.0.0.2/x,10.0.0.3:8787"] {
            environment["CLOUD_AGENT_CONTROL_URLS"] = bad
            #expect(throws: RuntimeConfigurationError("CLOUD_AGENT_CONTROL_URLS must be comma-separated ws:// or wss:// URLs")) {
                try RuntimeConfiguration(environment: environment, currentDirectory: "/")
            }
        }
    }

    @Test func agentsSeeNoneOfTheRuntimesOwnVariables() {
        let environment = base.merging(["HOME": "/home/s", "PATH": "/bin", "SESSION_HOME": "/home/s", "MY_TOKEN": "t", "CLOUD_AGENT_WORKSPACE": "/ws"]) { $1 }
        #expect(
            RuntimeConfiguration.agentEnvironment(from: environment) == [
                "SESSION_ID": "agent_1", "HOME": "/home/s", "PATH": "/bin", "SESSION_HOME": "/home/s", "MY_TOKEN": "t",
            ])
    }
}

/// The runtime's link logic in-process (no WebSocket): hello first, nothing before the welcome,
/// resend after a reconnect, acknowledgements, ping, shutdown.
@Suite("Agent runtime links")
struct AgentRuntimeLinkTests {
    private func makeRuntime() -> AgentRuntime {
        AgentRuntime(
            configuration: RuntimeConfiguration(
                controlURL: "ws://127.0.0.1:1/", sessionId: "agent_1", runtimeId: "rt_1", workspace: FileManager.default.temporaryDirectory.path),
            agents: AgentCatalog(runtimeExecutable: "/nonexistent"),
            agentEnvironment: [:],
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        )
    }

    /// Reads frames until one matches, returning every frame read.
    private func read(
        _ iterator: inout AsyncStream<String>.AsyncIterator,
        until predicate: (RuntimeMessage) -> Bool
    ) async throws -> [RuntimeMessage] {
        var messages: [RuntimeMessage] = []
        while let frame = await iterator.next() {
            let message = try ProtocolCoding.decodeRuntimeMessage(frame)
            messages.append(message)
            if predicate(message) { return messages }
        }
        Issue.record("the link closed")
        return messages
    }

    private func isEnded(_ message: RuntimeMessage, _ executionId: String) -> Bool {
        if case .event(let event) = message { event.kind == RuntimeEvent.Kind.ended && event.executionId == executionId } else { false }
    }

    @Test func helloWelcomeResendAckAndShutdown() async throws {
        let runtime = makeRuntime()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await runtime.run() }

            let first = await runtime.openLink()
            var frames = first.frames.makeAsyncIterator()
            let hello = try ProtocolCoding.decodeRuntimeMessage(try #require(await frames.next()))
            #expect(hello == .hello(runtimeId: "rt_1", protocolVersion: RuntimeProtocol.version, activeExecutionId: nil, lastSeq: 0))
            #expect(await runtime.heartbeatInterval(on: first.id) == nil)

            // Accepted before the welcome: it runs, but its events wait for the welcome.
            await runtime.receive(.execute(ExecuteCommand(executionId: "exc_1", agent: "nope", prompt: "")), on: first.id)
            await runtime.receive(.ping(nonce: 5), on: first.id)
            #expect(try await read(&frames) { $0 == .pong(nonce: 5) } == [.pong(nonce: 5)])
            await runtime.receive(.welcome(ackedSeq: 0, heartbeatIntervalMs: 250, stopGraceMs: 1000, idleTimeoutMs: 5000, controlUrls: nil), on: first.id)
            #expect(await runtime.heartbeatInterval(on: first.id) == .milliseconds(250))
            #expect(await runtime.idleTimeout == .milliseconds(5000))
            await runtime.receive(.settings(idleTimeoutMs: 1500), on: first.id)
            #expect(await runtime.idleTimeout == .milliseconds(1500))
            let untilEnded = try await read(&frames) { isEnded($0, "exc_1") }
            guard case .event(let ended) = try #require(untilEnded.last) else { return }
            #expect(ended.seq == 1)
            #expect(ended.data == ["status": .string("failed"), "error": .string("unknown agent nope")])

            // The same execution again is ignored; a second one runs (seq 2).
            await runtime.receive(.execute(ExecuteCommand(executionId: "exc_1", agent: "nope", prompt: "")), on: first.id)
            await runtime.receive(.execute(ExecuteCommand(executionId: "exc_2", agent: "nope", prompt: "")), on: first.id)
            let second = try await read(&frames) { isEnded($0, "exc_2") }
            #expect(second.filter { if case .event(let event) = $0 { event.executionId == "exc_1" } else { false } }.isEmpty)
            guard case .event(let secondEnded) = try #require(second.last) else { return }
            #expect(secondEnded.seq == 2)

            // Reconnect: seq 1 was acknowledged, seq 2 was not and is sent again.
            await runtime.receive(.ack(seq: 1), on: first.id)
            await runtime.closeLink(first.id)
            #expect(await frames.next() == nil)
            let relink = await runtime.openLink()
            var again = relink.frames.makeAsyncIterator()
            let rehello = try ProtocolCoding.decodeRuntimeMessage(try #require(await again.next()))
            #expect(rehello == .hello(runtimeId: "rt_1", protocolVersion: RuntimeProtocol.version, activeExecutionId: nil, lastSeq: 2))
            // Frames for a closed link are ignored.
            await runtime.receive(.ping(nonce: 1), on: first.id)
            await runtime.receive(.welcome(ackedSeq: 1, heartbeatIntervalMs: 100, stopGraceMs: 1000, idleTimeoutMs: nil, controlUrls: nil), on: relink.id)
            let resent = try ProtocolCoding.decodeRuntimeMessage(try #require(await again.next()))
            #expect(resent == .event(secondEnded))
            // A welcome without an idle timeout (an older control plane's) keeps the one known.
            #expect(await runtime.idleTimeout == .milliseconds(1500))

            // The control plane asks the runtime to shut down: run() returns.
            await runtime.receive(.shutdown(reason: "idle"), on: relink.id)
            _ = try await group.next()
        }
    }

    /// A runtime whose "scripted" agent is the given shell script instead.
    private func withScriptAgent(
        _ script: String,
        outboxLimitBytes: Int = EventOutbox.defaultLimitBytes,
        _ body: (AgentRuntime, AgentRuntime.Link, inout AsyncStream<String>.AsyncIterator) async throws -> Void
    ) async throws {
        let directory = try makeTemporaryDirectory("script-agent")
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("agent.sh").path
        try Data(("#!/bin/sh\n" + script + "\n").utf8).write(to: URL(fileURLWithPath: path))
        #expect(chmod(path, 0o755) == 0)
        var configuration = RuntimeConfiguration(controlURL: "ws://127.0.0.1:1/", sessionId: "agent_1", runtimeId: "rt_1", workspace: directory.path)
        configuration.outboxLimitBytes = outboxLimitBytes
        let runtime = AgentRuntime(
            configuration: configuration,
            agents: AgentCatalog(runtimeExecutable: path),
            agentEnvironment: ProcessInfo.processInfo.environment,
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await runtime.run() }
            let link = await runtime.openLink()
            var frames = link.frames.makeAsyncIterator()
            _ = await frames.next()
            do {
                try await body(runtime, link, &frames)
            } catch {
                await runtime.receive(.shutdown(reason: "test failed"), on: link.id)
                throw error
            }
            await runtime.receive(.shutdown(reason: "test over"), on: link.id)
            _ = try await group.next()
        }
    }

    @Test func killEscalatesToSIGKILLWhenTheAgentIgnoresSIGTERM() async throws {
        try await withScriptAgent("trap '' TERM\necho started\nsleep 30") { runtime, link, frames in
            await runtime.receive(.welcome(ackedSeq: 0, heartbeatIntervalMs: 60_000, stopGraceMs: 300, idleTimeoutMs: nil, controlUrls: nil), on: link.id)
            await runtime.receive(.execute(ExecuteCommand(executionId: "exc_stubborn", agent: "scripted", prompt: "")), on: link.id)
            let started = try await read(&frames) { message in
                if case .event(let event) = message { event.data["line"] == .string("started") } else { false }
            }
            let events = started.compactMap { message -> RuntimeEvent? in if case .event(let event) = message { event } else { nil } }
            #expect(events.map(\.kind) == [RuntimeEvent.Kind.running, RuntimeEvent.Kind.output])
            #expect(events.last?.data == ["stream": .string("stdout"), "line": .string("started")])
            let group = Int32(try #require(events.first?.data["processGroup"]?.intValue))
            try await eventually(within: 30, "sleep to start") { livingProcesses(inGroup: group).count >= 2 }

            let killed = ContinuousClock.now
            await runtime.receive(.kill(executionId: "exc_stubborn", reason: "user"), on: link.id)
            let ended = try await read(&frames) { isEnded($0, "exc_stubborn") }
            #expect(ContinuousClock.now - killed >= .milliseconds(300), "SIGKILL only after the grace")
            guard case .event(let endedEvent)? = ended.last else { return }
            #expect(endedEvent.data == ["status": .string("interrupted"), "interruptReason": .string("user"), "signal": .string("SIGKILL")])
            try await eventually(within: 10, "the group to be gone") { livingProcesses(inGroup: group).isEmpty }
        }
    }

    @Test func anAgentKilledByASignalFailsNamingIt() async throws {
        try await withScriptAgent("echo '{\"type\":\"text\",\"text\":\"bye\"}'\nkill -9 $$") { runtime, link, frames in
            await runtime.receive(.welcome(ackedSeq: 0, heartbeatIntervalMs: 60_000, stopGraceMs: 1_000, idleTimeoutMs: nil, controlUrls: nil), on: link.id)
            await runtime.receive(.execute(ExecuteCommand(executionId: "exc_signal", agent: "scripted", prompt: "")), on: link.id)
            let messages = try await read(&frames) { isEnded($0, "exc_signal") }
            let events = messages.compactMap { message -> RuntimeEvent? in if case .event(let event) = message { event } else { nil } }
            #expect(events.map(\.kind) == [RuntimeEvent.Kind.running, RuntimeEvent.Kind.agent, RuntimeEvent.Kind.ended])
            #expect(events.last?.data == ["status": .string("failed"), "signal": .string("SIGKILL"), "error": .string("agent killed by SIGKILL")])
        }
    }

    @Test func aFullOutboxHoldsTheAgentUntilAcknowledgementsMakeRoom() async throws {
        // ~330 KB of output: more than the outbox's bound and the pipe's buffer together.
        let lines = 3000
        let marker = try makeTemporaryDirectory("held-agent").appendingPathComponent("finished")
        defer { try? FileManager.default.removeItem(at: marker.deletingLastPathComponent()) }
        let script = "seq 1 \(lines) | sed 's/$/ \(String(repeating: "x", count: 100))/'\ntouch '\(marker.path)'"
        let limit = 16_384
        try await withScriptAgent(script, outboxLimitBytes: limit) { runtime, link, frames in
            await runtime.receive(.welcome(ackedSeq: 0, heartbeatIntervalMs: 60_000, stopGraceMs: 1_000, idleTimeoutMs: nil, controlUrls: nil), on: link.id)
            await runtime.receive(.execute(ExecuteCommand(executionId: "exc_held", agent: "scripted", prompt: "")), on: link.id)
            try await eventually(within: 30, "the outbox to fill") { await runtime.unacknowledgedBytes >= limit }
            // Held: for a second nothing more is read (the bound plus at most one event) and the
            // agent, blocked writing to its full pipe, does not get to its end.
            let holdEnds = ContinuousClock.now + .seconds(1)
            while ContinuousClock.now < holdEnds {
                #expect(await runtime.unacknowledgedBytes < limit + 1024)
                #expect(!FileManager.default.fileExists(atPath: marker.path))
                try await Task.sleep(for: .milliseconds(50))
            }
            // Acknowledging as the events come makes room: everything arrives, in order, once.
            var outputs: [String] = []
            var seqs: [Int64] = []
            var ended: RuntimeEvent?
            while ended == nil, let frame = await frames.next() {
                guard case .event(let event) = try ProtocolCoding.decodeRuntimeMessage(frame) else { continue }
                seqs.append(event.seq)
                if let line = event.data["line"]?.stringValue { outputs.append(line) }
                if event.kind == RuntimeEvent.Kind.ended { ended = event }
                await runtime.receive(.ack(seq: event.seq), on: link.id)
            }
            #expect(ended?.data["status"] == .string("completed"))
            #expect(seqs == Array(1...Int64(seqs.count)))
            #expect(outputs == (1...lines).map { "\($0) \(String(repeating: "x", count: 100))" })
            #expect(FileManager.default.fileExists(atPath: marker.path))
            #expect(await runtime.unacknowledgedBytes == 0)
        }
    }
}

@Suite("Control-plane endpoints")
struct ControlEndpointsTests {
    let a = "ws://10.0.0.1:8787/v1/runtime/connect"
    let b = "ws://10.0.0.2:8787/v1/runtime/connect"
    let c = "wss://node-3.example/v1/runtime/connect"

    /// How an attempt ended.
    enum Attempt {
        /// Failed (or got no welcome).
        case failed
        /// Welcomed, then dropped within `ControlEndpoints.heldAfter`.
        case dropped
        /// Welcomed and held a while, then ended.
        case held
    }

    /// Ends one attempt per entry; returns, for each, the endpoint tried and whether the runtime
    /// waits before the next one.
    func run(_ endpoints: inout ControlEndpoints, _ attempts: [Attempt]) -> [(tried: String, waits: Bool)] {
        attempts.map { attempt in
            let tried = endpoints.current
            let waits =
                switch attempt {
                case .failed: endpoints.attemptEnded(welcomed: false, lasted: .milliseconds(5))
                case .dropped: endpoints.attemptEnded(welcomed: true, lasted: .milliseconds(50))
                case .held: endpoints.attemptEnded(welcomed: true, lasted: ControlEndpoints.heldAfter)
                }
            return (tried, waits)
        }
    }

    @Test func startsAtTheFirstAndKeepsEachOnce() {
        let endpoints = ControlEndpoints([a, b, a, c, b])
        #expect(endpoints.urls == [a, b, c])
        #expect(endpoints.current == a)
    }

    @Test func failedAttemptsGoRoundRobinAndWaitOnlyOnceEveryEndpointFailedInARow() {
        var endpoints = ControlEndpoints([a, b, c])
        let attempts = run(&endpoints, Array(repeating: .failed, count: 7))
        #expect(attempts.map(\.tried) == [a, b, c, a, b, c, a])
        #expect(attempts.map(\.waits) == [false, false, true, false, false, true, false])
    }

    @Test func aHeldConnectionThatEndsIsReplacedByTheNextEndpointAtOnce() {
        var endpoints = ControlEndpoints([a, b, c])
        // a fails, b is held then dies: c at once. The failures count again from the held
        // connection: c, a and b fail before the wait.
        let attempts = run(&endpoints, [.failed, .held, .failed, .failed, .failed, .failed])
        #expect(attempts.map(\.tried) == [a, b, c, a, b, c])
        #expect(attempts.map(\.waits) == [false, false, false, false, true, false])
    }

    @Test func aConnectionWelcomedAndDroppedAtOnceCountsAsAFailure() {
        // Nodes that welcome and drop runtimes at once must not draw them into a loop without a wait.
        var endpoints = ControlEndpoints([a, b])
        #expect(run(&endpoints, [.dropped, .dropped, .held]).map(\.waits) == [false, true, false])
    }

    @Test func withOneEndpointEveryAttemptIsFollowedByTheWaitAsBefore() {
        var endpoints = ControlEndpoints([a])
        let attempts = run(&endpoints, [.failed, .held, .dropped])
        #expect(attempts.map(\.tried) == [a, a, a])
        #expect(attempts.map(\.waits) == [true, true, true])
    }

    @Test func aWelcomeReplacesTheListAndTheCurrentEndpointStays() {
        var endpoints = ControlEndpoints([a])
        let changed = endpoints.replace(with: [b, "http://not-a-runtime-route", a, "", b])
        #expect(changed)
        #expect(endpoints.urls == [b, a])
        #expect(endpoints.current == a)
        #expect(run(&endpoints, [.held, .failed, .failed]).map(\.tried) == [a, b, a])
        // The same list again changes nothing.
        let changedAgain = endpoints.replace(with: [b, a])
        #expect(!changedAgain)
    }

    @Test func afterACurrentEndpointLeftTheListTheFirstIsNext() {
        var endpoints = ControlEndpoints([a, b])
        let changed = endpoints.replace(with: [c, b])
        #expect(changed)
        #expect(run(&endpoints, [.held, .failed, .failed, .failed]).map(\.tried) == [a, c, b, c])
    }

    @Test(arguments: [[], ["http://x", "tcp://y", ""]])
    func anEmptyOrWhollyInvalidListIsIgnored(_ named: [String]) {
        var endpoints = ControlEndpoints([a, b])
        let changed = endpoints.replace(with: named)
        #expect(!changed)
        #expect(endpoints == ControlEndpoints([a, b]))
    }
}
