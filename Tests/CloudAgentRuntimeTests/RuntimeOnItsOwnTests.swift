import CloudAgentTestSupport
import CloudAgentProtocol
import CloudAgentRuntime
import Foundation
import HTTPTypes
import Testing

/// The real `cloud-agent-runtime` process when its control plane refuses it, goes away, or comes
/// back (the API contract, "Runtimes on their own"). Serialized: several measure how soon it exits.
@Suite("A runtime on its own: refused, orphaned, reconnected", .serialized, .long)
struct RuntimeOnItsOwnTests {
    private func runningEvent(_ plane: FakeControlPlane, _ executionId: String) async -> RuntimeEvent? {
        await plane.events(of: executionId).first { $0.kind == RuntimeEvent.Kind.running }
    }

    /// Runs `body` with a fake control plane whose server it may stop and start again.
    private func withStoppableControlPlane(
        _ plane: FakeControlPlane,
        _ body: (FakeControlPlaneServer) async throws -> Void
    ) async throws {
        let server = try await FakeControlPlaneServer.start(plane)
        do {
            try await body(server)
            await server.stop()
        } catch {
            await server.stop()
            throw error
        }
    }

    /// Checks `condition` throughout `seconds` (something that must not happen for a while).
    private func holds(for seconds: Double, _ what: String, _ condition: () async -> Bool) async throws {
        let end = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while ContinuousClock.now < end {
            guard await condition() else {
                Issue.record("\(what) did not hold for \(seconds) s")
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    @Test(arguments: [HTTPResponse.Status.unauthorized, .forbidden, .notFound])
    func aRefusedRuntimeExitsAtOnceSayingWhy(_ status: HTTPResponse.Status) async throws {
        let plane = FakeControlPlane()
        await plane.setRefusing(status)
        try await withFakeControlPlane(plane) { plane in
            let started = ContinuousClock.now
            try await withRuntime(plane) { runtime in
                try await runtime.process.waitForExit(within: 3)
                #expect(ContinuousClock.now - started < .seconds(3))
                #expect(runtime.process.exitStatus == 0)
                let log = runtime.process.stderr
                let line = log.split(separator: "\n").first { $0.contains("refused this runtime") }
                #expect(line?.contains("rule=refused") == true, "\(log)")
                #expect(line?.contains("status=\(status.code)") == true, "\(log)")
                #expect(await plane.connections.isEmpty)
            }
        }
    }

    @Test func aRuntimeRefusedOnReconnectStopsItsAgentAndExits() async throws {
        try await withFakeControlPlane(FakeControlPlane(stopGraceMs: 1_000)) { plane in
            try await withRuntime(plane, stopGraceMs: 1_000) { runtime in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                await plane.send(.execute(ExecuteCommand(executionId: "exc_refused", agent: "scripted", prompt: "say started\nrun sleep 60")))
                let running = try await eventuallyValue(within: 30, "the agent to start") { await runningEvent(plane, "exc_refused") }
                let group = Int32(try #require(running.data["processGroup"]?.intValue))
                try await eventually(within: 30, "the agent's shell to start") { livingProcesses(inGroup: group).count >= 2 }
                // The session is deleted meanwhile: the next upgrade is a 401.
                await plane.setRefusing(.unauthorized)
                await plane.closeConnection()
                try await runtime.process.waitForExit(within: 5)
                #expect(runtime.process.exitStatus == 0)
                #expect(runtime.process.stderr.contains("rule=refused"))
                try await eventually(within: 5, "the agent's group to be gone") { livingProcesses(inGroup: group).isEmpty }
            }
        }
    }

    @Test func anUnavailableControlPlaneIsRetriedNotRefused() async throws {
        let plane = FakeControlPlane()
        await plane.setRefusing(.serviceUnavailable)
        try await withFakeControlPlane(plane) { plane in
            try await withRuntime(plane) { runtime in
                try await eventually(within: 10, "a declined upgrade") { runtime.process.stderr.contains("HTTP 503") }
                try await holds(for: 1.5, "the runtime retrying") { runtime.process.isRunning }
                await plane.setRefusing(nil)
                try await eventually(within: 10, "the runtime's hello once the control plane accepts it") { await plane.hellos.count == 1 }
                #expect(runtime.process.isRunning)
                #expect(!runtime.process.stderr.contains("rule=refused"))
            }
        }
    }

    @Test func anIdleRuntimeWithoutItsControlPlaneStopsItselfAfterItsIdleTimeout() async throws {
        let plane = FakeControlPlane()
        try await withStoppableControlPlane(plane) { server in
            try await withRuntime(plane, idleTimeoutMs: 1_000) { runtime in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                // Connected, the control plane decides: idle past its timeout, it stays.
                try await holds(for: 1.5, "the connected runtime running") { runtime.process.isRunning }
                let lost = ContinuousClock.now
                await server.stop()
                try await runtime.process.waitForExit(within: 5)
                #expect(ContinuousClock.now - lost < .seconds(5))
                #expect(runtime.process.exitStatus == 0)
                let log = runtime.process.stderr
                let line = try #require(log.split(separator: "\n").first { $0.contains("the runtime stops itself") }, "\(log)")
                #expect(line.contains("rule=idle"))
                #expect(line.contains("idleTimeoutMs=1000"))
                #expect(line.contains("idleMs="))
            }
        }
    }

    @Test(arguments: ["welcome", "settings"])
    func theIdleTimeoutFromTheControlPlaneIsTheOneUsed(_ frame: String) async throws {
        // Launched with 10 minutes; the control plane says 800 ms in its welcome or in a later
        // settings frame (a PATCH).
        let plane = FakeControlPlane(idleTimeoutMs: frame == "welcome" ? 800 : 600_000)
        try await withStoppableControlPlane(plane) { server in
            try await withRuntime(plane, idleTimeoutMs: 600_000) { runtime in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                if frame == "settings" {
                    await plane.send(.settings(idleTimeoutMs: 800))
                    try await eventually(within: 10, "the settings to be taken") { runtime.process.stderr.contains("settings changed") }
                }
                await server.stop()
                // A deadline for the wait, not a bound under test (the line below says which
                // timeout the runtime went by): generous for a loaded machine.
                try await runtime.process.waitForExit(within: 20)
                let line = runtime.process.stderr.split(separator: "\n").first { $0.contains("the runtime stops itself") }
                #expect(line?.contains("rule=idle") == true)
                #expect(line?.contains("idleTimeoutMs=800") == true, "\(runtime.process.stderr)")
            }
        }
    }

    @Test(arguments: ["say started\nsleep 60", "say started\nrun trap '' TERM; sleep 60"])
    func aBusyRuntimeStopsAtTheOrphanLimitAndTakesItsAgentWithIt(_ prompt: String) async throws {
        let plane = FakeControlPlane(stopGraceMs: 1_000)
        try await withStoppableControlPlane(plane) { server in
            try await withRuntime(plane, stopGraceMs: 1_000, idleTimeoutMs: 600_000, orphanLimitMs: 2_000) { runtime in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                await plane.send(.execute(ExecuteCommand(executionId: "exc_orphan", agent: "scripted", prompt: prompt)))
                let running = try await eventuallyValue(within: 30, "the agent to start") { await runningEvent(plane, "exc_orphan") }
                let pid = Int32(try #require(running.data["pid"]?.intValue))
                let group = Int32(try #require(running.data["processGroup"]?.intValue))
                if prompt.contains("run ") {
                    try await eventually(within: 30, "the agent's shell to start") { livingProcesses(inGroup: group).count >= 2 }
                }
                let lost = ContinuousClock.now
                await server.stop()
                try await holds(for: 1, "the busy runtime running within its orphan limit") { runtime.process.isRunning && isAlive(pid) }
                try await runtime.process.waitForExit(within: 10)
                let exitedAfter = ContinuousClock.now - lost
                #expect(exitedAfter >= .seconds(2) && exitedAfter < .seconds(8), "exited \(exitedAfter) after losing the control plane")
                #expect(runtime.process.exitStatus == 0)
                // SIGTERM to the agent's group, SIGKILL after the grace: nothing of it is left.
                try await eventually(within: 5, "the agent to be gone") { !isAlive(pid) && livingProcesses(inGroup: group).isEmpty }
                let line = runtime.process.stderr.split(separator: "\n").first { $0.contains("the runtime stops itself") }
                #expect(line?.contains("rule=orphanLimit") == true, "\(runtime.process.stderr)")
                #expect(line?.contains("orphanLimitMs=2000") == true)
                #expect(line?.contains("executionId=exc_orphan") == true)
            }
        }
    }

    @Test func aControlPlaneBackWithinTheLimitGetsEveryEventProducedMeanwhile() async throws {
        let plane = FakeControlPlane()
        try await withStoppableControlPlane(plane) { server in
            // An idle timeout shorter than the downtime: the undelivered events keep the runtime up.
            try await withRuntime(plane, idleTimeoutMs: 500, orphanLimitMs: 20_000) { runtime in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                let port = try #require(await plane.port)
                await plane.send(
                    .execute(
                        ExecuteCommand(
                            executionId: "exc_away", agent: "scripted", prompt: "say before\nsleep 1\ntick 20 0.05\nwrite away.txt done\nsay after"
                        )))
                try await eventually(within: 30, "the first event") { !(await plane.events(of: "exc_away").isEmpty) }
                await server.stop()
                let before = await plane.events(of: "exc_away").count
                // The whole execution runs while the control plane is away.
                let marker = runtime.workspace.appendingPathComponent("away.txt")
                try await eventually(within: 30, "the agent to finish while disconnected") { FileManager.default.fileExists(atPath: marker.path) }
                try await holds(for: 1, "the runtime waiting with undelivered events") { runtime.process.isRunning }
                let back = try await FakeControlPlaneServer.start(plane, port: port)
                do {
                    try await eventually(within: 30, "the execution's end to arrive") { await plane.ended("exc_away") != nil }
                } catch {
                    await back.stop()
                    throw error
                }
                await back.stop()
                let events = await plane.orderedEvents
                #expect(events.map(\.seq) == Array(1...Int64(events.count)))
                let texts = events.compactMap { $0.kind == RuntimeEvent.Kind.agent ? $0.data["text"]?.stringValue : nil }
                #expect(texts == ["before"] + (1...20).map { "tick \($0)/20" } + ["after"])
                #expect(events.count > before)
                #expect(await plane.ended("exc_away")?.data["status"] == .string("completed"))
                #expect(await plane.hellos.count == 2)
            }
        }
    }

    @Test func aControlFrameOfAnUnknownTypeIsHarmless() async throws {
        try await withFakeControlPlane(FakeControlPlane()) { plane in
            try await withRuntime(plane) { runtime in
                try await eventually(within: 30, "the runtime's hello") { await plane.hellos.count == 1 }
                await plane.sendRaw(#"{"type":"fromTheFuture","value":{"nested":[1,2]}}"#)
                await plane.send(.ping(nonce: 77))
                try await eventually(within: 10, "pong") { await plane.received.contains { $0.message == .pong(nonce: 77) } }
                #expect(await plane.connections.count == 1)
                #expect(runtime.process.stderr.contains("unknown type"))
            }
        }
    }
}
