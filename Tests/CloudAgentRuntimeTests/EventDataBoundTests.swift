import CloudAgentTestSupport
import CloudAgentProtocol
@testable import CloudAgentRuntime
import Foundation
import Testing

@Suite("Event size bound")
struct EventDataBoundTests {
    func frameBytes(_ data: [String: JSONValue]) -> Int {
        let event = RuntimeEvent(seq: 1, executionId: "exc_1", kind: RuntimeEvent.Kind.output, at: Date(), data: data)
        return ProtocolCoding.encode(.event(event)).utf8.count
    }

    @Test("small events pass untouched; a huge one, even of characters JSON escapes six-fold, is cut to fit a frame")
    func bounds() {
        let small: [String: JSONValue] = ["stream": "stdout", "line": "hello"]
        #expect(EventDataBound.bounded(small) == small)
        for character in ["x", "\u{1}", "é", "😀"] {
            let huge: [String: JSONValue] = ["stream": "stdout", "line": .string(String(repeating: character, count: 900_000))]
            #expect(frameBytes(huge) > RuntimeProtocol.maxFrameBytes || character == "x")
            let bounded = EventDataBound.bounded(huge)
            #expect(bounded["truncated"] == true && bounded["stream"] == "stdout")
            #expect(frameBytes(bounded) < RuntimeProtocol.maxFrameBytes)
        }
        let manyKeys = JSONValue.object(Dictionary(uniqueKeysWithValues: (0..<100_000).map { ("key\($0)", JSONValue.string("v")) }))
        let wide = EventDataBound.bounded(["kind": "log", "message": "m", "extra": manyKeys])
        #expect(wide["kind"] == "log" && wide["truncated"] == true && wide["extra"] == nil)
        #expect(frameBytes(wide) < RuntimeProtocol.maxFrameBytes)
    }
}
