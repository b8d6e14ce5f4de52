import CloudAgentTestSupport
import CloudAgentProtocol
import Foundation
import Testing

@Suite("Protocol frames")
struct ProtocolCodingTests {
    static let at = Date(timeIntervalSince1970: 1_790_000_000)

    static let runtimeMessages: [RuntimeMessage] = [
        .hello(runtimeId: "rt_1", protocolVersion: RuntimeProtocol.version, activeExecutionId: nil, lastSeq: 0),
        .hello(runtimeId: "rt_1", protocolVersion: RuntimeProtocol.version, activeExecutionId: "exc_1", lastSeq: 41),
        .event(
            RuntimeEvent(seq: 1, executionId: "exc_1", kind: RuntimeEvent.Kind.running, at: at, data: ["pid": .number(4242), "processGroup": .number(4242)])),
        .event(
            RuntimeEvent(
                seq: 2, executionId: "exc_1", kind: RuntimeEvent.Kind.agent, at: at,
                data: [
                    "kind": .string("tool"), "name": .string("run"), "exitCode": .number(3), "status": .string("error"),
                    "output": .string("line \"one\"\n✓ / \\ \u{1}"), "raw": .string(#"{"type":"tool"}"#),
                ])),
        .event(RuntimeEvent(seq: 3, executionId: "exc_1", kind: RuntimeEvent.Kind.output, at: at, data: ["stream": .string("stderr"), "line": .string("")])),
        .event(
            RuntimeEvent(
                seq: 4, executionId: "exc_1", kind: RuntimeEvent.Kind.ended, at: at,
                data: [
                    "status": .string("interrupted"), "interruptReason": .string("runtime shutdown: SIGTERM"),
                    "nested": .object(["list": .array([.null, .bool(true), .bool(false), .number(1.5), .number(-7), .string("x")])]),
                ])),
        .event(RuntimeEvent(seq: 5, executionId: "exc_2", kind: RuntimeEvent.Kind.ended, at: at)),
        .heartbeat(executionId: "exc_1", at: at, events: 17),
        .pong(nonce: 9),
    ]

    static let controlMessages: [ControlMessage] = [
        .welcome(ackedSeq: 0, heartbeatIntervalMs: 30_000, stopGraceMs: 10_000, idleTimeoutMs: nil, controlUrls: nil),
        .welcome(ackedSeq: 12, heartbeatIntervalMs: 100, stopGraceMs: 0, idleTimeoutMs: 900_000, controlUrls: nil),
        .welcome(
            ackedSeq: 12, heartbeatIntervalMs: 100, stopGraceMs: 0, idleTimeoutMs: nil,
            controlUrls: [
                "ws://10.0.0.1:8787/v1/runtime/connect", "wss://node-2.example/v1/runtime/connect",
            ]),
        .welcome(ackedSeq: 1, heartbeatIntervalMs: 100, stopGraceMs: 0, idleTimeoutMs: nil, controlUrls: []),
        .settings(idleTimeoutMs: 60_000),
        .nodes(controlUrls: ["ws://10.0.0.1:8787/v1/runtime/connect", "ws://10.0.0.2:8787/v1/runtime/connect"]),
        .ack(seq: 12),
        .execute(ExecuteCommand(executionId: "exc_1", agent: "scripted", prompt: "say hi\nsleep 0.5\n")),
        .execute(ExecuteCommand(executionId: "exc_2", agent: "claude-code", prompt: String(repeating: "é", count: 10_000), mode: "plan", model: "opus")),
        .kill(executionId: "exc_1", reason: "user"),
        .pause(executionId: "exc_1"),
        .resume(executionId: "exc_1"),
        .shutdown(reason: "idle"),
        .ping(nonce: 7),
    ]

    @Test(arguments: runtimeMessages)
    func runtimeMessagesRoundTrip(_ message: RuntimeMessage) throws {
        let text = ProtocolCoding.encode(message)
        #expect(try ProtocolCoding.decodeRuntimeMessage(text) == message)
        // A runtime frame is not a control frame.
        #expect(throws: ProtocolError.self) { try ProtocolCoding.decodeControlMessage(text) }
    }

    @Test(arguments: controlMessages)
    func controlMessagesRoundTrip(_ message: ControlMessage) throws {
        let text = ProtocolCoding.encode(message)
        #expect(try ProtocolCoding.decodeControlMessage(text) == message)
        #expect(throws: ProtocolError.self) { try ProtocolCoding.decodeRuntimeMessage(text) }
    }

    @Test func timestampsAreMillisecondsSince1970() throws {
        let text = ProtocolCoding.encode(.heartbeat(executionId: "exc_1", at: Self.at, events: 1))
        #expect(text.contains("\"at\":1790000000000"))
        let withMilliseconds = Date(timeIntervalSince1970: 1_790_000_000.123)
        guard
            case .heartbeat(_, let at, _) = try ProtocolCoding.decodeRuntimeMessage(
                ProtocolCoding.encode(.heartbeat(executionId: "e", at: withMilliseconds, events: 0)))
        else {
            Issue.record("not a heartbeat")
            return
        }
        #expect(abs(at.timeIntervalSince(withMilliseconds)) < 0.001)
    }

    @Test func framesHaveATypeAndCamelCaseFields() throws {
        let frame = ProtocolCoding.encode(.welcome(ackedSeq: 3, heartbeatIntervalMs: 100, stopGraceMs: 500, idleTimeoutMs: 2000, controlUrls: nil))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(frame.utf8)) as? [String: Any])
        #expect(object["type"] as? String == "welcome")
        #expect(object["ackedSeq"] as? Int == 3)
        #expect(object["heartbeatIntervalMs"] as? Int == 100)
        #expect(object["stopGraceMs"] as? Int == 500)
        #expect(object["idleTimeoutMs"] as? Int == 2000)
        #expect(object.count == 5, "no controlUrls when there are none: \(object.keys.sorted())")
        let settings = try #require(try JSONSerialization.jsonObject(with: Data(ProtocolCoding.encode(.settings(idleTimeoutMs: 800)).utf8)) as? [String: Any])
        #expect(settings.count == 2)
        #expect(settings["type"] as? String == "settings")
        #expect(settings["idleTimeoutMs"] as? Int == 800)
        let nodes = try #require(
            try JSONSerialization.jsonObject(with: Data(ProtocolCoding.encode(.nodes(controlUrls: ["ws://a/v1/runtime/connect"])).utf8)) as? [String: Any])
        #expect(nodes.count == 2)
        #expect(nodes["type"] as? String == "nodes")
        #expect(nodes["controlUrls"] as? [String] == ["ws://a/v1/runtime/connect"])
    }

    @Test func aWelcomeFromAnOlderControlPlaneHasNoIdleTimeout() throws {
        // Older control planes send no idleTimeoutMs; an unusable one is left out, not a refusal.
        #expect(
            try ProtocolCoding.decodeControlMessage(#"{"type":"welcome","ackedSeq":4,"heartbeatIntervalMs":100,"stopGraceMs":500}"#)
                == .welcome(ackedSeq: 4, heartbeatIntervalMs: 100, stopGraceMs: 500, idleTimeoutMs: nil, controlUrls: nil))
        #expect(
            try ProtocolCoding.decodeControlMessage(#"{"type":"welcome","ackedSeq":4,"heartbeatIntervalMs":100,"idleTimeoutMs":0}"#)
                == .welcome(ackedSeq: 4, heartbeatIntervalMs: 100, stopGraceMs: 10_000, idleTimeoutMs: nil, controlUrls: nil))
        // An older runtime decoding a newer welcome ignores what it does not know: extra fields pass.
        #expect(
            try ProtocolCoding.decodeControlMessage(#"{"type":"welcome","ackedSeq":4,"heartbeatIntervalMs":100,"idleTimeoutMs":7,"future":true}"#)
                == .welcome(ackedSeq: 4, heartbeatIntervalMs: 100, stopGraceMs: 10_000, idleTimeoutMs: 7, controlUrls: nil))
    }

    @Test func aWelcomeNamesTheControlPlanesNodesInControlUrls() throws {
        let urls = ["ws://10.0.0.1:8787/v1/runtime/connect", "ws://10.0.0.2:8787/v1/runtime/connect"]
        let frame = ProtocolCoding.encode(.welcome(ackedSeq: 3, heartbeatIntervalMs: 100, stopGraceMs: 500, idleTimeoutMs: nil, controlUrls: urls))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(frame.utf8)) as? [String: Any])
        #expect(object["controlUrls"] as? [String] == urls)
        // Slashes unescaped: the frame reads as it is logged.
        #expect(frame.contains(#""controlUrls":["ws://10.0.0.1:8787/v1/runtime/connect","#))
        #expect(
            try ProtocolCoding.decodeControlMessage(#"{"type":"welcome","ackedSeq":4,"heartbeatIntervalMs":100,"controlUrls":["ws://a/x"]}"#)
                == .welcome(ackedSeq: 4, heartbeatIntervalMs: 100, stopGraceMs: 10_000, idleTimeoutMs: nil, controlUrls: ["ws://a/x"]))
        // Without the field (an older or single-node control plane) it is nil, not a refusal.
        #expect(
            try ProtocolCoding.decodeControlMessage(#"{"type":"welcome","ackedSeq":4,"heartbeatIntervalMs":100}"#)
                == .welcome(ackedSeq: 4, heartbeatIntervalMs: 100, stopGraceMs: 10_000, idleTimeoutMs: nil, controlUrls: nil))
        // Left out of the frame when nil.
        let withoutUrls = ProtocolCoding.encode(.welcome(ackedSeq: 3, heartbeatIntervalMs: 100, stopGraceMs: 500, idleTimeoutMs: nil, controlUrls: nil))
        #expect(!withoutUrls.contains("controlUrls"))
    }

    @Test func aFrameOfAnUnknownTypeIsToldApartFromAMalformedOne() {
        // Either side ignores a well-formed frame of a type it does not know (a newer peer's).
        for decode in [{ _ = try ProtocolCoding.decodeControlMessage($0) }, { _ = try ProtocolCoding.decodeRuntimeMessage($0) }] as [(String) throws -> Void] {
            do {
                try decode(#"{"type":"somethingNew","value":1}"#)
                Issue.record("decoded a frame of an unknown type")
            } catch let error as ProtocolError {
                #expect(error.unknownType == "somethingNew")
            } catch {
                Issue.record("unexpected error \(error)")
            }
            do {
                try decode(#"{"type":"ack","seq":"x"}"#)
                Issue.record("decoded a malformed frame")
            } catch let error as ProtocolError {
                #expect(error.unknownType == nil)
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
    }

    @Test func malformedFramesAreProtocolErrors() {
        let frames = [
            "", "null", "[]", "{}", #"{"type":"nope"}"#, #"{"type":"welcome"}"#, #"{"type":"welcome","ackedSeq":1,"heartbeatIntervalMs":0}"#,
            #"{"type":"ack"}"#, #"{"type":"settings"}"#, #"{"type":"settings","idleTimeoutMs":0}"#, #"{"type":"nodes"}"#, #"{"type":"nodes","controlUrls":[]}"#,
            #"{"type":"execute"}"#, #"{"type":"kill"}"#, #"{"type":"event","event":{"seq":0}}"#,
            #"{"type":"hello","runtimeId":"r"}"#, #"{"type":"heartbeat","executionId":"e"}"#, #"{"type":7}"#,
            String(repeating: "x", count: RuntimeProtocol.maxFrameBytes + 1),
        ]
        for frame in frames {
            #expect(throws: ProtocolError.self, "\(frame.prefix(60))") { try ProtocolCoding.decodeControlMessage(frame) }
            #expect(throws: ProtocolError.self, "\(frame.prefix(60))") { try ProtocolCoding.decodeRuntimeMessage(frame) }
        }
    }

    @Test func randomBytesMutationsAndTruncationsNeverCrash() {
        var generator = SplitMix64(seed: 0xC10D_A6E7)
        let valid = Self.runtimeMessages.map { ProtocolCoding.encode($0) } + Self.controlMessages.map { ProtocolCoding.encode($0) }
        let alphabet = Array(#"{}[]":,.-+0123456789eEtrufalsn \ "#.utf8) + [0x00, 0x7F, 0xC3, 0xA9, 0xFF]
        var decodedValues = 0
        var refused = 0

        func check(_ bytes: [UInt8]) {
            let text = String(decoding: bytes, as: UTF8.self)
            do {
                _ = try ProtocolCoding.decodeControlMessage(text)
                decodedValues += 1
            } catch {
                refused += 1
            }
            do {
                _ = try ProtocolCoding.decodeRuntimeMessage(text)
                decodedValues += 1
            } catch {
                refused += 1
            }
        }

        for _ in 0..<3000 {
            let count = Int(generator.next() % 200)
            check((0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) })
        }
        for _ in 0..<3000 {
            let count = Int(generator.next() % 120)
            check((0..<count).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] })
        }
        for frame in valid {
            let bytes = Array(frame.utf8)
            for cut in 0...bytes.count { check(Array(bytes[..<cut])) }
            for _ in 0..<300 {
                var mutated = bytes
                for _ in 0..<(1 + Int(generator.next() % 4)) {
                    let index = Int(generator.next() % UInt64(max(mutated.count, 1)))
                    switch generator.next() % 4 {
                    case 0 where !mutated.isEmpty: mutated[index] = UInt8(truncatingIfNeeded: generator.next())
                    case 1 where !mutated.isEmpty: mutated.remove(at: index)
                    case 2: mutated.insert(alphabet[Int(generator.next() % UInt64(alphabet.count))], at: min(index, mutated.count))
                    default:
                        if !mutated.isEmpty { mutated[index] = alphabet[Int(generator.next() % UInt64(alphabet.count))] }
                    }
                }
                check(mutated)
            }
        }
        // Deep nesting inside a frame's data must be refused or decoded, not overflow the stack.
        for depth in [100, 1_000, 100_000] {
            let nested = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
            check(Array(#"{"type":"event","event":{"seq":1,"executionId":"e","kind":"agent","at":0,"data":{"x":\#(nested)}}}"#.utf8))
        }
        #expect(decodedValues > 0)
        #expect(refused > 10_000)
    }
}

/// A small deterministic generator, so a failing fuzz case can be replayed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
