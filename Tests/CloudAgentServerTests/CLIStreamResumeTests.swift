@testable import CloudAgentCLI
import CloudAgentCore
import CloudAgentServer
import Foundation
import HTTPTypes
import HummingbirdTesting
import Testing

/// The client's stream follower against a real server whose per-subscriber buffer is tiny: a
/// client that stalls is closed with 4001 and resumes from the last id it saw, and every event
/// is handed over exactly once, in order.
@Suite("The CLI's stream follower: slow-consumer resume and the end of a deleted session")
struct CLIStreamResumeTests {
    static let timing = Timing(
        idleTimeoutMs: 30_000, heartbeatIntervalMs: 150, staleThresholdMs: 1200, pendingTimeoutMs: 10_000, stopGraceMs: 1000,
        stuckAfterMs: 60_000
    )

    /// A control plane with a stream buffer of `bufferSize` events.
    static func withServer(bufferSize: Int, _ body: @Sendable (TestAPI, APIClient) async throws -> Void) async throws {
        let server = try TestServer(timing: timing)
        var configuration = server.configuration
        configuration.streamBufferEvents = bufferSize
        let plane = try await ControlPlane.open(configuration, logger: server.logs.logger)
        do {
            try await plane.buildApplication().test(.live) { client in
                let port = try #require(client.port)
                try await body(TestAPI(client: client, plane: plane), APIClient(baseURL: "http://127.0.0.1:\(port)", token: TestServer.localToken))
            }
        } catch {
            await TestServer.killRuntimes(of: plane)
            throw error
        }
        await TestServer.killRuntimes(of: plane)
    }

    @Test("a stalled client is dropped as a slow consumer (4001) and resumes: every event once, in order, to the end")
    func slowConsumerResumes() async throws {
        try await Self.withServer(bufferSize: 8) { api, client in
            let id = try await api.createSession(["prompt": "say start\ntick 3000 0\nsay end"])
            let started = try await api.request(.post, "/v1/sessions/\(id)/initiate")
            let execution = try #require(started["executionId"]?.stringValue)
            let notices = Locked<[String]>([])
            let seen = Locked<[Int64]>([])
            let follower = EventFollower(api: client, session: id.rawValue, notice: { text in notices.withLock { $0.append(text) } })
            try await withDeadline(seconds: 120, "the end of the execution") {
                try await follower.follow(StreamQuery()) { event in
                    let count = seen.withLock { seen in
                        seen.append(event.id)
                        return seen.count
                    }
                    // Stall once the agent is under way, long enough for the server's buffer to overflow.
                    if count == 10 { try await Task.sleep(for: .seconds(4)) }
                    return event.isExecutionEnd && event.executionId == execution ? .stop : .more
                }
            }
            let ids = seen.value
            #expect(ids == Array(1...Int64(ids.count)), "every event once, in order (\(ids.count) events)")
            let stored = try await api.events(id)
            #expect(ids.count == stored.count || ids.count == stored.count - 1, "stopped at the execution's end")
            let resumed = notices.value.filter { $0.contains("too slow") }
            #expect(!resumed.isEmpty, "the server never dropped the stalled client: \(notices.value)")
        }
    }

    @Test("a session deleted while followed ends the follow (4004)")
    func deletedSessionEndsTheStream() async throws {
        try await Self.withServer(bufferSize: 1024) { api, client in
            let id = try await api.createSession(["prompt": "say hello"])
            try await api.waitForRuntime(id, state: "running")
            let follower = EventFollower(api: client, session: id.rawValue, notice: { _ in })
            let seen = Locked(0)
            let outcome = Locked<String>("")
            try await withDeadlineBeside(seconds: 30, "the end of the stream") {
                do {
                    try await follower.follow(StreamQuery()) { _ in
                        seen.withLock { $0 += 1 }
                        return .more
                    }
                    outcome.withLock { $0 = "returned" }
                } catch EventFollower.Ended.sessionDeleted {
                    outcome.withLock { $0 = "deleted" }
                }
            } sideTask: {
                try await eventually(within: 10, "the first event") { seen.value > 0 }
                #expect(try await api.request(.delete, "/v1/sessions/\(id)").status == 204)
            }
            #expect(outcome.value == "deleted")
        }
    }
}

/// Runs `body` under a deadline while `sideTask` runs beside it.
func withDeadlineBeside(seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> Void, sideTask: @escaping @Sendable () async throws -> Void) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await sideTask() }
        group.addTask { try await withDeadline(seconds: seconds, what, body) }
        try await group.waitForAll()
    }
}
