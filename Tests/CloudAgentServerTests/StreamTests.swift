import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import HummingbirdTesting
import Logging
import NIOCore
import NIOWebSocket
import Synchronization
import Testing
import WSClient

/// A WebSocket subscriber of the stream route, recording what it got and how it was closed.
final class StreamSubscriber: Sendable {
    struct Received: Sendable {
        var events: [JSONValue] = []
        var closeCode: Int?
        var closeReason: String?
    }

    private let state = Mutex(Received())

    /// The numeric close code (application codes 4000–4999 arrive as `.unknown`).
    static func number(_ code: WebSocketErrorCode) -> Int {
        switch code {
        case .unknown(let value): Int(value)
        case .normalClosure: 1000
        case .goingAway: 1001
        default: -1
        }
    }
    var received: Received { state.withLock { $0 } }
    var ids: [Int64] { received.events.compactMap { $0["id"]?.intValue } }

    /// Connects and reads until the server closes (or `stopAfter` events), sleeping
    /// `delayMs` after each frame (a slow reader).
    func run(url: String, headers: HTTPFields = [:], delayMs: Int = 0, stopAfter: Int? = nil) async throws {
        var configuration = WebSocketClientConfiguration()
        configuration.additionalHeaders = headers
        configuration.maxFrameSize = 1 << 20
        let close = try await WebSocketClient.connect(url: url, configuration: configuration, logger: Logger(label: "stream-test")) { inbound, _, _ in
            for try await message in inbound.messages(maxSize: 1 << 20) {
                guard case .text(let text) = message else { continue }
                let event = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
                let count = self.state.withLock { state in
                    state.events.append(event)
                    return state.events.count
                }
                if let stopAfter, count >= stopAfter { return }
                if delayMs > 0 { try await Task.sleep(for: .milliseconds(delayMs)) }
            }
        }
        state.withLock { state in
            if let close {
                state.closeCode = Self.number(close.closeCode)
                state.closeReason = close.reason
            }
        }
    }
}

@Suite("The live stream", .processes)
struct StreamTests {
    static let timing = Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 150, staleThresholdMs: 1500, stopGraceMs: 1500)

    static func streamURL(_ api: TestAPI, _ id: SessionID, _ query: String) throws -> String {
        let port = try #require(api.client.port)
        return "ws://127.0.0.1:\(port)/v1/sessions/\(id)/stream\(query)"
    }

    static let auth: HTTPFields = [.authorization: "Bearer \(TestServer.localToken)"]

    @Test("replay then live: every event once, in id order, across the seam")
    func replayThenLive() async throws {
        try await TestServer(timing: Self.timing).run { api in
            let id = try await api.createSession(["prompt": "tick 30 0.03\nsay done"])
            try await api.waitForRuntime(id, state: "running")
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            // Join mid-execution: part of it is replayed, the rest is live.
            try await eventually(within: 10, "some events") { try await api.events(id).count > 8 }
            let subscriber = StreamSubscriber()
            let url = try Self.streamURL(api, id, "?fromId=0")
            async let reading: Void = subscriber.run(url: url, headers: Self.auth, stopAfter: nil)
            try await api.waitForExecution(id, status: "completed")
            let total = try await api.events(id).count
            try await eventually(within: 10, "the subscriber to catch up") { subscriber.received.events.count >= total }
            #expect(try await api.request(.delete, "/v1/sessions/\(id)").status == 204)
            try await reading
            // Everything, then the deletion's own runtime.stopped, then the 4004 close.
            #expect(subscriber.ids == Array(1...Int64(total + 1)))
            #expect(subscriber.received.events.last?["data"]?["rule"] == "deleted")
            #expect(subscriber.received.closeCode == 4004)
        }
    }

    @Test("filters by execution and type, and fromId skips what the client has")
    func filters() async throws {
        try await TestServer(timing: Self.timing).run { api in
            let id = try await api.createSession(["prompt": "say one\nsay two"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let first = try await api.waitForExecution(id, status: "completed")
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say three"]).status == 202)
            let second = try await api.waitForExecution(id, status: "completed")
            let secondId = try #require(second["executionId"]?.stringValue)
            #expect(first["executionId"] != second["executionId"])
            let subscriber = StreamSubscriber()
            try await subscriber.run(url: try Self.streamURL(api, id, "?types=agent&executionId=\(secondId)"), headers: Self.auth, stopAfter: 1)
            #expect(subscriber.received.events.map { $0["data"]?["text"] } == ["three"])
            let all = try await api.events(id)
            let skip = StreamSubscriber()
            try await skip.run(url: try Self.streamURL(api, id, "?fromId=\(all.count - 1)"), headers: Self.auth, stopAfter: 1)
            #expect(skip.ids == [Int64(all.count)])
        }
    }

    @Test("tickets: valid, expired, for another session; no credentials at all")
    func tickets() async throws {
        var server = try TestServer(timing: Self.timing)
        // Long enough for the valid ticket's use on a loaded machine, short enough to wait out.
        server.streamTicketLifetimeMs = 1500
        try await server.run { api in
            let id = try await api.createSession(["prompt": "say hi"])
            let other = try await api.createSession(["prompt": "say other"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed")
            let issued = try await api.request(.post, "/v1/sessions/\(id)/stream-ticket")
            #expect(issued.status == 200)
            let ticket = try #require(issued["ticket"]?.stringValue)
            #expect(issued["expiresAt"]?.stringValue != nil)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/stream-ticket", token: nil).status == 401)

            let valid = StreamSubscriber()
            try await valid.run(url: try Self.streamURL(api, id, "?ticket=\(ticket)"), stopAfter: 1)
            #expect(valid.ids == [1])

            for url in [
                try Self.streamURL(api, other, "?ticket=\(ticket)"), try Self.streamURL(api, id, ""), try Self.streamURL(api, id, "?ticket=forged.ticket"),
            ] {
                await #expect(throws: (any Error).self) { try await StreamSubscriber().run(url: url, stopAfter: 1) }
            }
            try await Task.sleep(for: .milliseconds(1600))
            await #expect(throws: (any Error).self) {
                try await StreamSubscriber().run(url: try Self.streamURL(api, id, "?ticket=\(ticket)"), stopAfter: 1)
            }
            // Another user's session: not found, whatever the credentials.
            let bob = BearerToken.generate()
            try await api.plane.store.saveToken(hash: BearerToken.hash(bob), owner: Owner(user: "bob"), createdAt: Date())
            #expect(try await api.request(.post, "/v1/sessions/\(id)/stream-ticket", token: bob).status == 404)
            await #expect(throws: (any Error).self) {
                try await StreamSubscriber().run(url: try Self.streamURL(api, id, ""), headers: [.authorization: "Bearer \(bob)"], stopAfter: 1)
            }
        }
    }

    @Test("a stuck subscriber is closed with the resume code while a fast one keeps up")
    func slowSubscriber() async throws {
        var server = try TestServer(timing: Self.timing)
        // Small, so that the stuck one is cut off soon; not so small that a fast reader on a loaded
        // 2-core machine falls 8 events behind for a moment and is cut off too.
        server.streamBufferEvents = 64
        try await server.run { api in
            // ~6 KB events (a tool's output, twice: output and raw), 3 MB in all: more than the
            // kernel buffers of a closed TCP window hold.
            let lines = (0..<500).map { _ in "run yes x | head -c 3000" }.joined(separator: "\n")
            let id = try await api.createSession(["prompt": .string(lines + "\nsay done")])
            try await api.waitForRuntime(id, state: "running")
            let port = try #require(api.client.port)
            let stuck = try RawWebSocket(port: port, path: "/v1/sessions/\(id)/stream", headers: ["Authorization": "Bearer \(TestServer.localToken)"])
            let fast = StreamSubscriber()
            async let fastReading: Void = fast.run(url: try Self.streamURL(api, id, ""), headers: Self.auth)
            try await eventually(within: 10, "both subscribers") { api.plane.sessions.hub.subscriberCount(id) == 2 }
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed", within: 90)
            let total = try await api.events(id).count
            try await eventually(within: 20, "the fast subscriber to get everything") { fast.received.events.count >= total }
            #expect(fast.ids == Array(1...Int64(total)))
            // The stuck one was cut off: reading now yields what was in flight, then the close.
            let frames = try await stuck.readUntilCloseInBackground()
            let ids = frames.texts.compactMap { try? JSONDecoder().decode(JSONValue.self, from: Data($0.utf8)) }.compactMap { $0["id"]?.intValue }
            let lastSeen = ids.last ?? 0
            print("stuck subscriber received \(ids.count) of \(total) events before its close")
            #expect(frames.closeCode == 4001)
            #expect(frames.closeReason == "slow consumer: resume with fromId=\(lastSeen)")
            #expect(ids == Array(1...lastSeen))
            #expect(lastSeen < Int64(total))
            // Resuming from there gets the rest, once each.
            let resumed = StreamSubscriber()
            try await resumed.run(url: try Self.streamURL(api, id, "?fromId=\(lastSeen)"), headers: Self.auth, stopAfter: total - Int(lastSeen))
            #expect(resumed.ids == Array((lastSeen + 1)...Int64(total)))
            #expect(try await api.request(.delete, "/v1/sessions/\(id)").status == 204)
            try await fastReading
        }
    }
}
