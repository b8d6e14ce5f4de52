@testable import CloudAgentCLI
import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import Testing

/// The stream route, scripted: each connection replays from `fromId` (resending the last event
/// the client already has, which it must drop), sends at most `perConnection` new events, then
/// closes alternately with 4001 (slow consumer) and by just ending the connection (a drop),
/// until the last event, after which it stays open. Without `streamRoute` the upgrade is
/// refused and only the events route answers (the polling fallback).
actor FakeStreamServer {
    let total: Int64
    let perConnection: Int64
    let streamRoute: Bool
    let silentFirst: Bool
    let token = "fake-token"
    private(set) var connections: [Int64] = []
    private(set) var polls = 0
    var port: Int?

    init(total: Int64, perConnection: Int64, streamRoute: Bool = true, silentFirst: Bool = false) {
        self.total = total
        self.perConnection = perConnection
        self.streamRoute = streamRoute
        self.silentFirst = silentFirst
    }

    func connected(from: Int64) -> Int {
        connections.append(from)
        return connections.count
    }

    func polled() { polls += 1 }
    func setPort(_ port: Int?) { self.port = port }

    static func event(_ id: Int64, total: Int64) -> String {
        let type = id == total ? "execution.completed" : "agent"
        let data = id == total ? #"{"exitCode":0}"# : #"{"kind":"text","text":"event \#(id)"}"#
        return #"{"at":"2025-01-01T00:00:00.000Z","data":\#(data),"executionId":"exc_1","id":\#(id),"sessionId":"agent_x","type":"\#(type)"}"#
    }

    static func fromId(_ path: String?) -> Int64 {
        guard let path, let query = path.split(separator: "?", maxSplits: 1).dropFirst().first else { return 0 }
        for item in query.split(separator: "&") where item.hasPrefix("fromId=") { return Int64(item.dropFirst("fromId=".count)) ?? 0 }
        return 0
    }

    /// Runs the fake server for the duration of `body`.
    func run(_ body: @Sendable (APIClient) async throws -> Void) async throws {
        var logger = Logger(label: "fake-stream")
        logger.logLevel = .critical
        let (total, perConnection, streamRoute, silentFirst, token) = (total, perConnection, streamRoute, silentFirst, token)
        let router = Router()
        router.get("v1/sessions/:id/events") { [self] request, _ -> Response in
            await self.polled()
            guard request.headers[.authorization] == "Bearer \(token)" else {
                return Response(
                    status: .unauthorized,
                    body: .init(byteBuffer: ByteBuffer(string: #"{"error":{"code":"UNAUTHORIZED","message":"a valid bearer token is required"}}"#)))
            }
            let from = request.uri.queryParameters["fromId"].flatMap { Int64(String($0)) } ?? 0
            let ids = from < total ? Array((from + 1)...min(total, from + 3)) : []
            let body = #"{"events":[\#(ids.map { Self.event($0, total: total) }.joined(separator: ","))],"nextFromId":\#(ids.last ?? from)}"#
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        let app = Application(
            router: router,
            server: .http1WebSocketUpgrade { [self] request, _, _ in
                guard streamRoute, request.path?.hasPrefix("/v1/sessions/agent_x/stream") == true,
                    request.headerFields[.authorization] == "Bearer \(token)"
                else { return .dontUpgrade }
                let from = Self.fromId(request.path)
                return .upgrade([:]) { inbound, outbound, _ in
                    let connection = await self.connected(from: from)
                    if silentFirst, connection == 1 {
                        // Open, but delivering nothing while the events route has them.
                        for try await _ in inbound.messages(maxSize: 1 << 16) {}
                        return
                    }
                    let last = min(total, from + perConnection)
                    for id in max(1, from)...max(1, last) where id <= last {
                        try await outbound.write(.text(Self.event(id, total: total)))
                    }
                    if last < total {
                        if connection % 2 == 1 {
                            try await outbound.close(.init(codeNumber: 4001), reason: "slow consumer: resume with fromId=\(last)")
                        }
                        return
                    }
                    for try await _ in inbound.messages(maxSize: 1 << 16) {}
                }
            },
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { [self] channel in await self.setPort(channel.localAddress?.port) },
            logger: logger
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await app.runService(gracefulShutdownSignals: []) }
            defer { group.cancelAll() }
            try await eventually(within: 30, "the fake stream server to listen") { self.port != nil }
            let listening = self.port
            let port = try #require(listening)
            try await body(APIClient(baseURL: "http://127.0.0.1:\(port)", token: token))
        }
    }
}

@Suite("The CLI's stream follower: resume after 4001 and drops without duplicates, the polling fallback, a deleted session", .processes)
struct CLIStreamResumeTests {
    /// Follows the fake server's session to its last event, recording the notices.
    static func followToEnd(_ client: APIClient, from: Int64 = 0) async throws -> (seen: [Int64], notices: [String]) {
        let notices = Locked<[String]>([])
        let seen = Locked<[Int64]>([])
        let follower = EventFollower(
            api: client, session: "agent_x", notice: { text in notices.withLock { $0.append(text) } }, pollInterval: .milliseconds(20),
            handshakeTimeout: .seconds(1), stallCheck: .milliseconds(300)
        )
        do {
            try await withDeadline(seconds: 30, "the last event") {
                try await follower.follow(StreamQuery(fromId: from)) { event in
                    seen.withLock { $0.append(event.id) }
                    return event.isExecutionEnd ? .stop : .more
                }
            }
        } catch {
            Issue.record("\(error): seen \(seen.value), notices \(notices.value)")
        }
        return (seen.value, notices.value)
    }

    @Test("closed as a slow consumer (4001) or dropped, it resumes from the last id: every event once, in order")
    func resumesWithoutDuplicates() async throws {
        let fake = FakeStreamServer(total: 40, perConnection: 7)
        try await fake.run { client in
            let (seen, notices) = try await Self.followToEnd(client)
            #expect(seen == Array(1...40), "every event once, in order")
            let connections = await fake.connections
            // A connection that hung in its upgrade is made again from the same id.
            #expect(connections == connections.sorted() && Set(connections) == [0, 7, 14, 21, 28, 35], "\(connections)")
            #expect(notices.contains { $0.contains("too slow") }, "\(notices)")
            #expect(notices.contains { $0.contains("closed") || $0.contains("did not open") }, "\(notices)")
        }
    }

    @Test("a connection that delivers nothing while the events route has events is abandoned and made again")
    func stalledConnectionIsReplaced() async throws {
        let fake = FakeStreamServer(total: 12, perConnection: 100, silentFirst: true)
        try await fake.run { client in
            let (seen, notices) = try await Self.followToEnd(client)
            #expect(seen == Array(1...12))
            #expect(notices.contains { $0.contains("delivered nothing") }, "\(notices)")
            #expect(await fake.connections.count >= 2)
        }
    }

    @Test("a server without the stream route is polled instead, with a notice")
    func pollingFallback() async throws {
        let fake = FakeStreamServer(total: 10, perConnection: 100, streamRoute: false)
        try await fake.run { client in
            let notices = Locked<[String]>([])
            let seen = Locked<[Int64]>([])
            let follower = EventFollower(
                api: client, session: "agent_x", notice: { text in notices.withLock { $0.append(text) } }, pollInterval: .milliseconds(20))
            try await withDeadline(seconds: 30, "the last event") {
                try await follower.follow(StreamQuery(fromId: 2)) { event in
                    seen.withLock { $0.append(event.id) }
                    return event.isExecutionEnd ? .stop : .more
                }
            }
            #expect(seen.value == Array(3...10))
            #expect(notices.value.contains { $0.contains("polling") }, "\(notices.value)")
        }
    }

    @Test("a refused upgrade is explained by the events route's error (401 here)")
    func refusedUpgradeExplained() async throws {
        let fake = FakeStreamServer(total: 10, perConnection: 100)
        try await fake.run { client in
            let stranger = APIClient(baseURL: client.baseURL, token: "wrong")
            let follower = EventFollower(api: stranger, session: "agent_x", notice: { _ in })
            do {
                try await follower.follow(StreamQuery()) { _ in .more }
                Issue.record("following with a wrong token succeeded")
            } catch let failure as CLIFailure {
                #expect(failure.exitCode == ExitStatus.usage)
                #expect(failure.message.contains("UNAUTHORIZED"), "\(failure.message)")
            }
        }
    }

    @Test("a session deleted while followed on the real server ends the follow (4004)")
    func deletedSessionEndsTheStream() async throws {
        let server = try TestServer(timing: CLIClientTests.timing)
        try await server.run { api in
            let client = APIClient(baseURL: "http://127.0.0.1:\(try #require(api.client.port))", token: TestServer.localToken)
            let id = try await api.createSession(["prompt": "say hello"])
            try await api.waitForRuntime(id, state: "running")
            let follower = EventFollower(api: client, session: id.rawValue, notice: { _ in })
            let seen = Locked(0)
            let outcome = Locked<String>("")
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await withDeadline(seconds: 30, "the end of the stream") {
                        do {
                            try await follower.follow(StreamQuery()) { _ in
                                seen.withLock { $0 += 1 }
                                return .more
                            }
                            outcome.withLock { $0 = "returned" }
                        } catch EventFollower.Ended.sessionDeleted {
                            outcome.withLock { $0 = "deleted" }
                        }
                    }
                }
                group.addTask {
                    try await eventually(within: 10, "the first event") { seen.value > 0 }
                    #expect(try await api.request(.delete, "/v1/sessions/\(id)").status == 204)
                }
                try await group.waitForAll()
            }
            #expect(outcome.value == "deleted")
        }
    }
}
