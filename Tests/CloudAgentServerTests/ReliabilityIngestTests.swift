import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import HummingbirdTesting
import Logging
import NIOWebSocket
import Synchronization
import Testing
import WSClient

/// Ingest takes the frames a runtime connection has already received as one batch (one
/// transaction, one cumulative ack). A burst mixing in-order events, a resend and an
/// out-of-order event keeps the per-event rules: each event stored exactly once, in `seq` order,
/// ids without gaps, the out-of-order one dropped, acks only for what is durable; a full resend
/// afterwards (as after a reconnect) stores nothing and is acknowledged again.
@Suite("Reliability: batched ingest", .processes)
struct ReliabilityIngestTests {
    static let timing = Timing(idleTimeoutMs: 600_000, heartbeatIntervalMs: 30_000, staleThresholdMs: 600_000, pendingTimeoutMs: 600_000)

    final class Peer: Sendable {
        let state = Mutex<(welcomed: Bool, executing: Bool, acks: [Int64])>((false, false, []))
        var acks: [Int64] { state.withLock { $0.acks } }
        var maxAck: Int64 { acks.max() ?? 0 }
    }

    static func eventFrame(_ seq: Int64, _ executionId: ExecutionID, kind: String = "agent", data: String) -> String {
        let at = Date().millisecondsSince1970
        return #"{"type":"event","event":{"seq":\#(seq),"executionId":"\#(executionId.rawValue)","kind":"\#(kind)","at":\#(at),"data":\#(data)}}"#
    }

    static func agent(_ seq: Int64, _ executionId: ExecutionID, text: String) -> String {
        eventFrame(seq, executionId, data: #"{"kind":"text","text":"\#(text)"}"#)
    }

    @Test("a burst with a resend and an out-of-order event: each event once, in order, ids without gaps; a full resend stores nothing")
    func burstKeepsPerEventRules() async throws {
        let server = try TestServer(timing: Self.timing)
        try await server.run { api in
            let store = api.plane.store
            // A session whose runtime is starting, with a pending execution (as a launch leaves it).
            let now = Date().truncatedToMilliseconds
            let id = SessionID()
            var session = SessionRecord(id: id, owner: .local, createdAt: now, spec: SessionSpec(prompt: "burst"), workBranch: "session/\(id.rawValue)")
            try session.runtime.requestStart(at: now)
            let secret = BearerToken.generate(prefix: "rts_")
            try session.runtime.recordLaunching(instanceId: UUID().uuidString.lowercased(), secretHash: BearerToken.hash(secret), hostNode: nil)
            let execution = Execution(id: ExecutionID(at: now), sessionId: id, prompt: "burst", acceptedAt: now)
            session.initiatedAt = now
            session.activeExecutionId = execution.id
            session.executionCount = 1
            try await store.insertSession(session)
            try await store.commit(
                SessionChange(
                    sessionId: id, newExecution: execution,
                    events: [
                        NewEvent(executionId: execution.id, type: EventType.executionStarted, at: now, data: ["prompt": "burst", "followUp": false])
                    ]))

            let port = try #require(api.client.port)
            var configuration = WebSocketClientConfiguration()
            configuration.additionalHeaders[HTTPField.Name("X-Cloud-Agent-Session")!] = id.rawValue
            configuration.additionalHeaders[HTTPField.Name("X-Cloud-Agent-Runtime-Secret")!] = secret
            let peer = Peer()
            let exec = execution.id
            _ = try await WebSocketClient.connect(
                url: "ws://127.0.0.1:\(port)/v1/runtime/connect", configuration: configuration, logger: Logger(label: "ingest-test")
            ) { inbound, outbound, _ in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for try await message in inbound.messages(maxSize: 1 << 20) {
                            guard case .text(let text) = message, let frame = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) else { continue }
                            peer.state.withLock { state in
                                switch frame["type"]?.stringValue {
                                case "welcome": state.welcomed = true
                                case "execute": state.executing = true
                                case "ack": if let seq = frame["seq"]?.intValue { state.acks.append(seq) }
                                default: break
                                }
                            }
                        }
                    }
                    try await outbound.write(.text(#"{"type":"hello","runtimeId":"burst-test","protocolVersion":1,"lastSeq":0}"#))
                    try await eventually(within: 10, "welcome and execute") { peer.state.withLock { $0.welcomed && $0.executing } }

                    // One burst, sent without waiting: running, agent 2…100, a resend of 50, 102
                    // before 101 (out of order), then 101, 102 and the end.
                    var burst = [Self.eventFrame(1, exec, kind: "execution.running", data: "{}")]
                    burst += (2...100).map { Self.agent(Int64($0), exec, text: "\($0)") }
                    burst.append(Self.agent(50, exec, text: "resent"))
                    burst.append(Self.agent(102, exec, text: "early"))
                    burst.append(Self.agent(101, exec, text: "101"))
                    burst.append(Self.agent(102, exec, text: "102"))
                    burst.append(Self.eventFrame(103, exec, kind: "execution.ended", data: #"{"status":"completed","exitCode":0}"#))
                    for frame in burst { try await outbound.write(.text(frame)) }
                    try await eventually(within: 20, "every event acknowledged") { peer.maxAck == 103 }
                    let acksBefore = peer.acks.count
                    #expect(peer.acks == peer.acks.sorted(), "acks never go back")

                    // Everything again, as a runtime resends its outbox after a reconnect.
                    for seq in 1...103 { try await outbound.write(.text(Self.agent(Int64(seq), exec, text: "again"))) }
                    try await eventually(within: 20, "the resend acknowledged") { peer.acks.count > acksBefore }
                    #expect(peer.acks.allSatisfy { $0 <= 103 })
                    try await outbound.close(.normalClosure, reason: nil)
                    group.cancelAll()
                }
            }

            let events = try await api.events(id)
            #expect(events.map(\.id) == Array(1...Int64(events.count)), "ids without gaps")
            let texts = events.filter { $0.type == "agent" }.compactMap { $0.data["text"]?.stringValue }
            #expect(texts == (2...102).map(String.init), "each agent event once, in seq order; the resent and out-of-order ones dropped")
            #expect(events.filter { $0.type == EventType.executionRunning }.count == 1)
            #expect(events.filter { $0.type == EventType.executionCompleted }.count == 1)
            let stored = try await store.execution(exec)
            #expect(stored?.status == .completed)
            #expect(stored?.progressEvents == 101)
            #expect(try await store.session(id)?.runtime.ackedSeq == 103)
            #expect(try await store.session(id)?.activeExecutionId == nil)
        }
    }
}
