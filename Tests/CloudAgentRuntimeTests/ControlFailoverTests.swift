import CloudAgentTestSupport
import CloudAgentProtocol
import CloudAgentRuntime
import Foundation
import HTTPTypes
import Testing

/// The real `cloud-agent-runtime` process and a control plane of several nodes (fake ones): it
/// passes over a node that is gone, moves to another when its node goes away, learns the nodes
/// from a welcome, and still stops when refused or when no node is left.
@Suite("A runtime and several control-plane nodes", .serialized, .long)
struct ControlFailoverTests {
    /// Runs `body` with a fake control plane whose server `body` may stop (a node that dies);
    /// it is stopped in any case afterwards.
    private func withNode(_ plane: FakeControlPlane, _ body: (FakeControlPlaneServer) async throws -> Void) async throws {
        let server = try await FakeControlPlaneServer.start(plane)
        do {
            try await body(server)
            await server.stop()
        } catch {
            await server.stop()
            throw error
        }
    }

    /// The URL of a node that is gone: a port that was just listening and now refuses connections.
    private func goneNodeURL() async throws -> String {
        let server = try await FakeControlPlaneServer.start(FakeControlPlane())
        let url = await server.plane.url
        await server.stop()
        return url
    }

    @Test func aNodeThatIsGoneIsPassedOverForTheNextOne() async throws {
        let gone = try await goneNodeURL()
        try await withFakeControlPlane(FakeControlPlane()) { live in
            let launched = ContinuousClock.now
            try await withRuntime(live, controlURL: gone, otherControlURLs: [await live.url]) { runtime in
                try await eventually(within: 5, "the runtime's hello to the live node") { await live.hellos.count == 1 }
                // Process start included; the gone node costs one refused connect, no backoff.
                #expect(ContinuousClock.now - launched < .seconds(5))
                let log = runtime.process.stderr
                #expect(log.contains("connection to the control plane failed"), "\(log)")
                #expect(log.contains("endpoint=\(gone)"), "the log names the endpoint that failed: \(log)")
            }
        }
    }

    @Test func whenItsNodeGoesAwayTheRuntimeMovesToTheNextOneAndResends() async throws {
        let first = FakeControlPlane()
        // Nothing made durable on the first node: everything is resent to the second.
        await first.setAcknowledging(false)
        try await withFakeControlPlane(FakeControlPlane()) { second in
            try await withNode(first) { firstServer in
                try await withRuntime(first, otherControlURLs: [await second.url]) { runtime in
                    try await eventually(within: 30, "the runtime's hello to the first node") { await first.hellos.count == 1 }
                    await first.send(.execute(ExecuteCommand(executionId: "exc_failover", agent: "scripted", prompt: "tick 4 0.05\nsleep 1\nsay after")))
                    try await eventually(within: 30, "some events on the first node") { await first.events.count >= 3 }

                    let lost = ContinuousClock.now
                    await firstServer.stop()
                    try await eventually(within: 2, "the runtime's hello to the second node") { await second.hellos.count == 1 }
                    #expect(ContinuousClock.now - lost < .seconds(2))
                    let hello = try #require(await second.hellos.first)
                    guard case .hello(let runtimeId, _, let activeExecutionId, let lastSeq) = hello else { return }
                    #expect(runtimeId == runtime.runtimeId)
                    #expect(activeExecutionId == "exc_failover")
                    #expect(lastSeq >= 3)

                    // Every event reaches the second node: the unacknowledged ones resent, seq 1 first.
                    try await eventually(within: 30, "the execution to end on the second node") { await second.ended("exc_failover") != nil }
                    let events = await second.orderedEvents
                    #expect(events.map(\.seq) == Array(1...Int64(events.count)))
                    #expect(events.last?.data["status"] == .string("completed"))
                    let firstEvent = await second.received.first { if case .event = $0.message { true } else { false } }
                    if case .event(let event)? = firstEvent?.message { #expect(event.seq == 1) }
                    let secondURL = await second.url
                    #expect(runtime.process.stderr.contains("endpoint=\(secondURL)"))
                }
            }
        }
    }

    @Test func theNodesNamedInAWelcomeAreWhereTheRuntimeGoesNext() async throws {
        let first = FakeControlPlane()
        try await withFakeControlPlane(FakeControlPlane()) { second in
            // The first node names the cluster (an unusable entry among them is ignored).
            await first.setControlUrls([await first.url, "http://not-a-runtime-route", await second.url])
            try await withNode(first) { firstServer in
                // Started knowing only the first node.
                try await withRuntime(first) { runtime in
                    try await eventually(within: 30, "the runtime's hello to the first node") { await first.hellos.count == 1 }
                    try await eventually(within: 5, "the runtime to take the named nodes") {
                        runtime.process.stderr.contains("the control plane named its nodes")
                    }
                    let lost = ContinuousClock.now
                    await firstServer.stop()
                    try await eventually(within: 2, "the runtime's hello to the second node") { await second.hellos.count == 1 }
                    #expect(ContinuousClock.now - lost < .seconds(2))
                    #expect(runtime.process.isRunning)
                }
            }
        }
    }

    @Test func oneNodesRefusalStopsTheRuntime() async throws {
        // The nodes share one database: a node that does not know the session speaks for all.
        let refusing = FakeControlPlane()
        await refusing.setRefusing(.unauthorized)
        try await withFakeControlPlane(FakeControlPlane()) { other in
            try await withFakeControlPlane(refusing) { _ in
                try await withRuntime(refusing, otherControlURLs: [await other.url]) { runtime in
                    try await runtime.process.waitForExit(within: 5)
                    #expect(runtime.process.exitStatus == 0)
                    #expect(runtime.process.stderr.contains("rule=refused"))
                    #expect(await other.connections.isEmpty)
                }
            }
        }
    }

    @Test func withNoNodeLeftAnIdleRuntimeStopsItself() async throws {
        let first = FakeControlPlane()
        let second = FakeControlPlane()
        try await withNode(second) { secondServer in
            try await withNode(first) { firstServer in
                try await withRuntime(first, otherControlURLs: [await second.url], idleTimeoutMs: 3_000) { runtime in
                    try await eventually(within: 30, "the runtime's hello to the first node") { await first.hellos.count == 1 }
                    await firstServer.stop()
                    try await eventually(within: 5, "the runtime's hello to the second node") { await second.hellos.count == 1 }
                    // Connected to a node, it stays; with every node gone, it is on its own.
                    #expect(runtime.process.isRunning)
                    let lost = ContinuousClock.now
                    await secondServer.stop()
                    // Idle since its first welcome: it stops within the idle timeout of that.
                    try await runtime.process.waitForExit(within: 6)
                    #expect(ContinuousClock.now - lost < .seconds(6))
                    #expect(runtime.process.exitStatus == 0)
                    #expect(runtime.process.stderr.contains("rule=idle"))
                }
            }
        }
    }
}
