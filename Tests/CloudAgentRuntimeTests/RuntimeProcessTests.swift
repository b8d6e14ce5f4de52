import CloudAgentTestSupport
import CloudAgentProtocol
import CloudAgentRuntime
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The real `cloud-agent-runtime` process against a fake control plane: connection, events,
/// heartbeats, resend after a cut connection, kill, shutdown and SIGTERM.
@Suite("The runtime process against a fake control plane", .serialized, .long)
struct RuntimeProcessTests {
    static let sessionId = RuntimeLaunch.sessionId

    private func runningEvent(_ plane: FakeControlPlane, _ executionId: String) async -> RuntimeEvent? {
        await plane.events(of: executionId).first { $0.kind == RuntimeEvent.Kind.running }
    }

    private func agentTexts(_ events: [RuntimeEvent]) -> [String] {
        events.compactMap { $0.kind == RuntimeEvent.Kind.agent && $0.data["kind"] == .string("text") ? $0.data["text"]?.stringValue : nil }
    }

    @Test func runsAnExecutionEndToEnd() async throws {
        try await withFakeControlPlane(FakeControlPlane()) { plane in
            try await withRuntime(plane) { runtime in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                let connection = try #require(await plane.connections.first)
                #expect(connection.secretHeader == runtime.secret)
                #expect(connection.sessionHeader == Self.sessionId)
                #expect(
                    await plane.hellos == [.hello(runtimeId: runtime.runtimeId, protocolVersion: RuntimeProtocol.version, activeExecutionId: nil, lastSeq: 0)])

                await plane.send(.ping(nonce: 42))
                try await eventually(within: 10, "pong") { await plane.received.contains { $0.message == .pong(nonce: 42) } }

                let prompt = """
                    say hello
                    write notes/a.txt hi there
                    run echo plain-stdout > /proc/$PPID/fd/1; echo plain-stderr > /proc/$PPID/fd/2
                    run env

                    just words
                    """
                await plane.send(.execute(ExecuteCommand(executionId: "exc_e2e", agent: "scripted", prompt: prompt)))
                try await eventually(within: 30, "the execution to end") { await plane.ended("exc_e2e") != nil }
                let events = await plane.events(of: "exc_e2e")
                #expect(events.map(\.seq) == Array(1...Int64(events.count)))
                #expect(events.first?.kind == RuntimeEvent.Kind.running)
                #expect(events.last?.kind == RuntimeEvent.Kind.ended)
                #expect(events.last?.data == ["status": .string("completed"), "exitCode": .number(0)])

                let running = try #require(events.first)
                let pid = try #require(running.data["pid"]?.intValue)
                #expect(pid > 1)
                #expect(running.data["processGroup"]?.intValue == pid)

                // Everything read from the agent's stdout, in its order.
                let fromStdout = events.filter { $0.kind == RuntimeEvent.Kind.agent || $0.data["stream"] == .string("stdout") }
                #expect(
                    fromStdout.map { $0.data["kind"]?.stringValue ?? "output:" + ($0.data["line"]?.stringValue ?? "") } == [
                        "text", "tool", "output:plain-stdout", "tool", "tool", "text",
                    ])
                #expect(agentTexts(events) == ["hello", "just words"])
                let stderrLines = events.filter { $0.data["stream"] == .string("stderr") }.map { $0.data["line"] }
                #expect(stderrLines == [.string("plain-stderr")])

                let write = fromStdout[1].data
                #expect(write["name"] == .string("write"))
                #expect(write["input"] == .string("notes/a.txt"))
                #expect(write["status"] == .string("ok"))
                #expect(write["output"] == .string("wrote 9 bytes"))
                #expect(write["raw"]?.stringValue?.hasPrefix(#"{"type":"tool""#) == true)
                #expect(try String(contentsOf: runtime.workspace.appendingPathComponent("notes/a.txt"), encoding: .utf8) == "hi there\n")

                // The agent sees the session's environment, none of the runtime's own.
                let env = try #require(fromStdout[4].data["output"]?.stringValue)
                #expect(fromStdout[4].data["exitCode"] == .number(0))
                #expect(env.contains("SESSION_ID=\(Self.sessionId)\n"))
                #expect(env.contains("MY_SESSION_VARIABLE=visible\n"))
                #expect(!env.contains("CLOUD_AGENT_"))
                #expect(!env.contains(runtime.secret))

                // The same execution again is ignored; an unknown agent fails; seqs go on.
                await plane.send(.execute(ExecuteCommand(executionId: "exc_e2e", agent: "scripted", prompt: "say again")))
                await plane.send(.execute(ExecuteCommand(executionId: "exc_unknown", agent: "nope", prompt: "say hi")))
                try await eventually(within: 30, "the unknown agent's execution to end") { await plane.ended("exc_unknown") != nil }
                #expect(await plane.events(of: "exc_e2e").count == events.count)
                let unknown = await plane.events(of: "exc_unknown")
                #expect(unknown.map(\.kind) == [RuntimeEvent.Kind.ended])
                #expect(unknown.first?.seq == Int64(events.count + 1))
                #expect(unknown.first?.data == ["status": .string("failed"), "error": .string("unknown agent nope")])

                // A failing agent: non-zero exit.
                await plane.send(.execute(ExecuteCommand(executionId: "exc_exit", agent: "scripted", prompt: "say bye\nexit 3")))
                try await eventually(within: 30, "the failing execution to end") { await plane.ended("exc_exit") != nil }
                #expect(
                    await plane.ended("exc_exit")?.data == [
                        "status": .string("failed"), "exitCode": .number(3), "error": .string("agent exited with code 3"),
                    ])
                #expect(await plane.duplicates == 0)
                #expect(await plane.connections.count == 1)
            }
        }
    }

    @Test func largeFramesTravelBothWays() async throws {
        try await withFakeControlPlane(FakeControlPlane()) { plane in
            try await withRuntime(plane) { _ in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                // A 60 KB prompt in one frame to the runtime; a ~120 KB event (text and raw) back.
                let text = String(repeating: "0123456789", count: 6_000)
                await plane.send(.execute(ExecuteCommand(executionId: "exc_large", agent: "scripted", prompt: "say \(text)")))
                try await eventually(within: 30, "the execution to end") { await plane.ended("exc_large") != nil }
                #expect(agentTexts(await plane.events(of: "exc_large")) == [text])
                #expect(await plane.connections.count == 1)
            }
        }
    }

    @Test func heartbeatsArriveAtTheIntervalDuringSilence() async throws {
        try await withFakeControlPlane(FakeControlPlane(heartbeatIntervalMs: 100)) { plane in
            try await withRuntime(plane) { _ in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                await plane.send(.execute(ExecuteCommand(executionId: "exc_hb", agent: "scripted", prompt: "say start\nsleep 1.5\nsay done")))
                try await eventually(within: 30, "the execution to end") { await plane.ended("exc_hb") != nil }
                let heartbeats = await plane.heartbeats(of: "exc_hb")
                // 15 expected; a loaded machine may lose a few.
                #expect(heartbeats.count >= 5, "\(heartbeats.count) heartbeats")
                #expect(heartbeats.map(\.events) == heartbeats.map(\.events).sorted())
                #expect(heartbeats.contains { $0.events >= 1 })
                let spans = zip(heartbeats.dropFirst(), heartbeats).map { $0.at - $1.at }
                #expect(spans.filter { $0 >= .milliseconds(50) }.count >= spans.count / 2, "heartbeats come at the interval, not in bursts")
                // No heartbeat after the execution ended, and none arrive once it has.
                let received = await plane.received
                let endedIndex = try #require(
                    received.firstIndex {
                        if case .event(let event) = $0.message { event.kind == RuntimeEvent.Kind.ended } else { false }
                    })
                #expect(!received[endedIndex...].contains { if case .heartbeat = $0.message { true } else { false } })
            }
        }
    }

    @Test func resendsUnacknowledgedEventsAfterTheConnectionIsCut() async throws {
        let plane = FakeControlPlane()
        await plane.setAcknowledging(false)
        try await withFakeControlPlane(plane) { plane in
            try await withRuntime(plane) { runtime in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                await plane.send(.execute(ExecuteCommand(executionId: "exc_resend", agent: "scripted", prompt: "tick 6 0.1\nsleep 0.5\nsay after")))
                try await eventually(within: 30, "some events") { await plane.events.count >= 4 }
                await plane.setAcknowledging(true)
                await plane.closeConnection()
                try await eventually(within: 30, "the runtime to reconnect") { await plane.hellos.count == 2 }
                guard case .hello(let runtimeId, _, let activeExecutionId, let lastSeq) = await plane.hellos[1] else { return }
                #expect(runtimeId == runtime.runtimeId)
                #expect(activeExecutionId == "exc_resend")
                #expect(lastSeq >= 4)
                try await eventually(within: 30, "the execution to end") { await plane.ended("exc_resend") != nil }

                // Seen twice (resent), kept once: seq 1…n without gaps, ticks once each in order.
                #expect(await plane.duplicates >= 4)
                let events = await plane.orderedEvents
                #expect(events.map(\.seq) == Array(1...Int64(events.count)))
                #expect(agentTexts(events) == (1...6).map { "tick \($0)/6" } + ["after"])
                #expect(events.last?.data["status"] == .string("completed"))
                // On each connection the runtime sent events in rising seq order.
                let received = await plane.received
                for connection in [1, 2] {
                    let seqs = received.compactMap { item -> Int64? in
                        if item.connection == connection, case .event(let event) = item.message { event.seq } else { nil }
                    }
                    #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count)
                }
                // After the reconnect the resend started from the welcome's ackedSeq (0): seq 1 first.
                let firstResent = received.first { item in
                    if item.connection == 2, case .event = item.message { true } else { false }
                }
                if case .event(let event)? = firstResent?.message { #expect(event.seq == 1) }
            }
        }
    }

    @Test func killInterruptsTheAgentAndItsWholeGroup() async throws {
        try await withFakeControlPlane(FakeControlPlane(stopGraceMs: 3_000)) { plane in
            try await withRuntime(plane) { _ in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                await plane.send(.execute(ExecuteCommand(executionId: "exc_kill", agent: "scripted", prompt: "say started\nrun sleep 30")))
                try await eventually(within: 30, "the agent to start") { agentTexts(await plane.events(of: "exc_kill")) == ["started"] }
                let running = try #require(await runningEvent(plane, "exc_kill"))
                let group = Int32(try #require(running.data["processGroup"]?.intValue))
                // The agent, its shell and `sleep` share the group.
                try await eventually(within: 30, "the agent's shell to start") { livingProcesses(inGroup: group).count >= 2 }

                await plane.send(.kill(executionId: "exc_kill", reason: "user"))
                try await eventually(within: 10, "the execution to end") { await plane.ended("exc_kill") != nil }
                let ended = try #require(await plane.ended("exc_kill"))
                #expect(ended.data["status"] == .string("interrupted"))
                #expect(ended.data["interruptReason"] == .string("user"))
                try await eventually(within: 10, "the agent's process group to be gone") { livingProcesses(inGroup: group).isEmpty }

                // A kill for an execution that is not running changes nothing; the runtime goes on.
                await plane.send(.kill(executionId: "exc_kill", reason: "again"))
                await plane.send(.execute(ExecuteCommand(executionId: "exc_after", agent: "scripted", prompt: "say after")))
                try await eventually(within: 30, "the next execution to end") { await plane.ended("exc_after") != nil }
                #expect(await plane.ended("exc_after")?.data["status"] == .string("completed"))
                #expect(await plane.events(of: "exc_kill").count { $0.kind == RuntimeEvent.Kind.ended } == 1)
            }
        }
    }

    @Test(arguments: ["say started\nsleep 30", "say started\nrun trap '' TERM; sleep 30"])
    func sigtermReportsTheExecutionInterruptedAndExitsWithinTheGrace(_ prompt: String) async throws {
        try await withFakeControlPlane(FakeControlPlane(stopGraceMs: 5_000)) { plane in
            try await withRuntime(plane, stopGraceMs: 5_000) { runtime in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                await plane.send(.execute(ExecuteCommand(executionId: "exc_term", agent: "scripted", prompt: prompt)))
                try await eventually(within: 30, "the agent to start") { agentTexts(await plane.events(of: "exc_term")) == ["started"] }
                let running = try #require(await runningEvent(plane, "exc_term"))
                let pid = Int32(try #require(running.data["pid"]?.intValue))
                let group = Int32(try #require(running.data["processGroup"]?.intValue))
                if prompt.contains("run ") {
                    try await eventually(within: 30, "the agent's shell to start") { livingProcesses(inGroup: group).count >= 2 }
                }

                let signalled = ContinuousClock.now
                runtime.process.signal(SIGTERM)
                try await runtime.process.waitForExit(within: 5)
                #expect(ContinuousClock.now - signalled < .seconds(5))
                #expect(runtime.process.exitedNormally)
                #expect(runtime.process.exitStatus == 0)

                let ended = try #require(await plane.ended("exc_term"))
                #expect(ended.data["status"] == .string("interrupted"))
                #expect(ended.data["interruptReason"] == .string(AgentRuntime.sigtermReason))
                #expect(await plane.durableSeq == ended.seq, "the ended event was acknowledged before the runtime exited")
                try await eventually(within: 5, "the agent to be gone") { !isAlive(pid) && livingProcesses(inGroup: group).isEmpty }
            }
        }
    }

    @Test func shutdownStopsTheAgentAndExits() async throws {
        try await withFakeControlPlane(FakeControlPlane(stopGraceMs: 5_000)) { plane in
            try await withRuntime(plane) { runtime in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                await plane.send(.execute(ExecuteCommand(executionId: "exc_shutdown", agent: "scripted", prompt: "sleep 30")))
                try await eventually(within: 30, "the agent to start") { await runningEvent(plane, "exc_shutdown") != nil }
                await plane.send(.shutdown(reason: "idle"))
                try await runtime.process.waitForExit(within: 5)
                #expect(runtime.process.exitStatus == 0)
                let ended = try #require(await plane.ended("exc_shutdown"))
                #expect(ended.data["status"] == .string("interrupted"))
                #expect(ended.data["interruptReason"] == .string("runtime shutdown: idle"))
            }
        }
    }

    @Test func sigtermWhileIdleExitsAtOnce() async throws {
        try await withFakeControlPlane(FakeControlPlane()) { plane in
            try await withRuntime(plane) { runtime in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                runtime.process.signal(SIGTERM)
                try await runtime.process.waitForExit(within: 5)
                #expect(runtime.process.exitStatus == 0)
                #expect(await plane.events.isEmpty)
            }
        }
    }

    @Test func withoutASecretTheRuntimeRefusesToStart() async throws {
        let logs = try makeTemporaryDirectory("runtime-nosecret")
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CLOUD_AGENT_") }
        environment["CLOUD_AGENT_CONTROL_URL"] = "ws://127.0.0.1:9/v1/runtime/connect"
        environment["SESSION_ID"] = "agent_x"
        environment["CLOUD_AGENT_RUNTIME_ID"] = "rt_x"
        let process = try TestProcess(try runtimeBinary(), arguments: [], environment: environment, directory: logs, stdin: "", outputIn: logs)
        defer { try? FileManager.default.removeItem(at: logs) }
        do {
            try await process.waitForExit(within: 10)
        } catch {
            await process.terminate()
            throw error
        }
        #expect(process.exitStatus == 2)
        #expect(process.stderr.contains("secret"))
    }
}
