// swift-tools-version:5.9
// The l2rec SDK for iOS (and macOS, for `swift test` on a Mac): the UniFFI
// Swift bindings over an XCFramework of the Rust library. Build the framework
// and copy the bindings first:  mobile/ios/build-xcframework
import PackageDescription

let package = Package(
    name: "L2Rec",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "L2Rec", targets: ["L2Rec"]),
    ],
    targets: [
        // libl2rec_ffi.a per platform, with the C header and module map (L2RecFFI).
        .binaryTarget(name: "L2RecFFI", path: "build/L2RecFFI.xcframework"),
        .target(
            name: "L2Rec",
            dependencies: ["L2RecFFI"],
            path: "Sources/L2Rec",
            linkerSettings: [
                // llama.cpp (Metal backend, C++) and wgpu (Metal).
                .linkedFramework("Foundation"),
                .linkedFramework("Metal"),
                .linkedFramework("MetalKit"),
                .linkedFramework("QuartzCore"),
                .linkedFramework("Accelerate"),
                .linkedFramework("Security"),
                .linkedLibrary("c++"),
            ]
        ),
        .testTarget(name: "L2RecTests", dependencies: ["L2Rec"], path: "Tests/L2RecTests"),
    ]
)
