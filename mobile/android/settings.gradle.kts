// The l2rec SDK for Android: a library module (`:l2rec`: the UniFFI Kotlin
// bindings, JNA, coroutines, the Rust library per ABI) and a Compose sample.
// Build the native libraries first: mobile/android/build-android-libs
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "l2rec-android"
include(":l2rec", ":sample")
