import CloudAgentTestSupport
import CloudAgentProtocol
import CloudAgentEngine
import CloudAgentServer
import Foundation
import Testing

/// The heartbeat fast path of the runtime endpoint never disagrees with the protocol decoder:
/// every frame it accepts decodes to the same message through `ProtocolCoding`; the frames
/// runtimes write are accepted; anything unusual is left to the decoder.
@Suite("Reliability: heartbeat frame fast path")
struct ReliabilityHeartbeatFrameTests {
    static func encoded(_ id: String, at: Date, events: Int64) -> String {
        ProtocolCoding.encode(RuntimeMessage.heartbeat(executionId: id, at: at, events: events))
    }

    @Test("the frames runtimes write: accepted, the same message as the decoder's")
    func runtimeFrames() throws {
        var generator = SystemRandomNumberGenerator()
        for index in 0..<2000 {
            let at = index % 3 == 0 ? Date() : Date(timeIntervalSince1970: Double(Int64.random(in: 0...4_000_000_000_000, using: &generator)) / 1000)
            let frame = Self.encoded("exe_\(UUID().uuidString.lowercased())", at: at, events: Int64.random(in: 0...1_000_000, using: &generator))
            let fast = try #require(HeartbeatFrame.parse(frame), "not accepted: \(frame)")
            #expect(fast == (try ProtocolCoding.decodeRuntimeMessage(frame)), "\(frame)")
        }
    }

    @Test("mutated and truncated frames: whatever is accepted decodes the same; the rest is left to the decoder")
    func mutations() {
        var generator = SystemRandomNumberGenerator()
        let seeds = [
            Self.encoded("exe_0123", at: Date(), events: 7), #"{"type":"heartbeat","executionId":"x","at":1}"#,
            #"{"at":12.5,"events":3,"executionId":"x","type":"heartbeat"}"#,
            #"{"type":"heartbeat","executionId":"x","at":-1.5e3,"events":-2}"#,
        ]
        let alphabet = Array(#"0123456789.-+eE",:{}"\ axé"#.utf8)
        var accepted = 0, tried = 0
        for seed in seeds {
            let bytes = Array(seed.utf8)
            for _ in 0..<3000 {
                var mutated = bytes
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: mutated = Array(mutated.prefix(Int.random(in: 0..<mutated.count, using: &generator)))
                case 1: mutated[Int.random(in: 0..<mutated.count, using: &generator)] = alphabet.randomElement(using: &generator)!
                default: mutated.insert(alphabet.randomElement(using: &generator)!, at: Int.random(in: 0...mutated.count, using: &generator))
                }
                let text = String(decoding: mutated, as: UTF8.self)
                tried += 1
                guard let fast = HeartbeatFrame.parse(text) else { continue }
                accepted += 1
                #expect(fast == (try? ProtocolCoding.decodeRuntimeMessage(text)), "fast path and decoder disagree on \(text)")
            }
        }
        #expect(tried == 12000)
        print("heartbeat fast path: \(accepted) of \(tried) mutated frames accepted, all agreeing with the decoder")
    }

    @Test(
        "unusual but valid frames go to the decoder",
        arguments: [
            #"{"type":"heartbeat","executionId":"a\"b","at":1}"#, #"{"type":"heartbeat","executionId":"x","at":1,"at":2}"#,
            #"{"type":"heartbeat","executionId":"x","at":1,"events":null}"#, #"{"type":"event","executionId":"x","at":1}"#,
            #"{"type":"heartbeat","executionId":"x","at":1,"events":2,"extra":1}"#, #"{ "type":"heartbeat","executionId":"x","at":1}"#,
            #"{"type":"heartbeat","executionId":"","at":1}"#, #"{"type":"heartbeat","executionId":"x","at":01}"#,
            #"{"type":"heartbeat","executionId":"x","at":1,"events":1.5}"#, #"{"type":"heartbeat","executionId":"x"}"#,
        ])
    func leftToTheDecoder(_ text: String) {
        #expect(HeartbeatFrame.parse(text) == nil)
    }
}
