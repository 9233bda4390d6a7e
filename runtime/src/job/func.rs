//! The short way to a job: a function whose argument is the job.
//!
//! [`jobs!`](crate::jobs) turns `fn name(arg: T) -> Result<O, E> { .. }`
//! into a [`JobFn`]: a zero-sized value named like the function, with
//! `T` as its input. [`Call<F>`] is the serde-typed [`Job`] underneath,
//! so everything a `Job` can do (process workers, `map`, timeouts,
//! retries) works unchanged; [`Handlers::func`], `Pool::submit_fn` and
//! `Pool::map_fn` take the function value itself.

use std::fmt;

use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde::{Serialize, Serializer};

use super::{Handlers, Job};

/// A function that is a job, made by [`jobs!`](crate::jobs): its
/// argument is the job's data, its `Result` the job's output and error.
pub trait JobFn: Copy + Send + Sync + 'static {
    /// The argument (a tuple when the function has several).
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// What a successful call returns.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// What a failed call returns.
    type Error: Serialize + DeserializeOwned + Send + fmt::Debug + 'static;
    /// The route name: the function's name. Not its module path, which
    /// differs between a supervisor and a separate worker binary that
    /// share the code; two functions of one name in one registry are
    /// refused when the pool or worker is built, as for any job type.
    const NAME: &'static str;

    /// Runs the function.
    fn call(input: Self::Input) -> Result<Self::Output, Self::Error>;
}

/// The job a [`JobFn`] runs: its input, encoded as the input alone.
pub struct Call<F: JobFn>(pub F::Input);

impl<F: JobFn> fmt::Debug for Call<F>
where
    F::Input: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple(F::NAME).field(&self.0).finish()
    }
}

impl<F: JobFn> Clone for Call<F>
where
    F::Input: Clone,
{
    fn clone(&self) -> Self {
        Call(self.0.clone())
    }
}

impl<F: JobFn> Serialize for Call<F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, F: JobFn> Deserialize<'de> for Call<F> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        F::Input::deserialize(d).map(Call)
    }
}

impl<F: JobFn> Job for Call<F> {
    type Output = F::Output;
    type Error = F::Error;
    const NAME: &'static str = F::NAME;
}

impl Handlers {
    /// Registers a function made by [`jobs!`](crate::jobs) (its route is
    /// the function's name).
    pub fn func<F: JobFn>(self, _f: F) -> Handlers {
        self.on::<Call<F>>(|Call(input), _| F::call(input))
    }
}

impl<F: JobFn> From<F> for Handlers {
    /// Handlers with the one function `f`.
    fn from(f: F) -> Handlers {
        Handlers::new().func(f)
    }
}

/// Turns functions into jobs: each `fn name(args) -> Result<O, E> { .. }`
/// becomes a value `name` that implements [`JobFn`], to register with
/// [`Handlers::func`] and run with `Pool::submit_fn` or `Pool::map_fn`.
/// A function of several arguments takes them as one tuple. The return
/// type must be written `Result<O, E>`; the argument and the `Result`'s
/// types must be serde types (they cross to process workers).
///
/// The function is then called as `name::call(input)` (no import needed),
/// or through a pool.
///
/// ```
/// # extern crate portpool_runtime as portpool;
/// portpool::jobs! {
///     /// The length of a word, refusing empty ones.
///     pub fn word_len(word: String) -> Result<usize, String> {
///         if word.is_empty() {
///             return Err("an empty word".into());
///         }
///         Ok(word.len())
///     }
///
///     fn add(a: u64, b: u64) -> Result<u64, String> {
///         a.checked_add(b).ok_or_else(|| format!("{a} + {b} overflows"))
///     }
/// }
///
/// use portpool::job::Handlers;
/// use portpool::pool::Pool;
///
/// let pool = Pool::builder()
///     .threads(2)
///     .handlers(Handlers::new().func(word_len).func(add))
///     .build()?;
/// let lens: Vec<_> = pool.map_fn(word_len, ["a", "bb", ""].map(String::from)).collect();
/// assert_eq!(lens.iter().filter_map(|r| r.as_ref().ok()).collect::<Vec<_>>(), [&1, &2]);
/// assert!(lens[2].is_err());
/// assert_eq!(pool.submit_fn(add, (2, 3))?.wait()?, 5);
/// assert_eq!(add::call((1, 1)), Ok(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[macro_export]
macro_rules! jobs {
    ($(
        $(#[$meta:meta])*
        $vis:vis fn $name:ident ( $($args:tt)* ) -> Result< $out:ty, $err:ty > $body:block
    )*) => {
        $( $crate::__job_fn! { [$(#[$meta])*] $vis $name ( $($args)* ) $out, $err, $body } )*
    };
}

/// One function of [`jobs!`]: an argument alone is the input; several
/// are a tuple.
#[doc(hidden)]
#[macro_export]
macro_rules! __job_fn {
    // One argument: the input is its type.
    ([$($meta:tt)*] $vis:vis $name:ident ( $arg:ident : $ty:ty $(,)? ) $out:ty, $err:ty, $body:block) => {
        $crate::__job_fn! { @item [$($meta)*] $vis $name ($ty) ($arg) $out, $err, $body }
    };
    // Several: the input is their tuple, taken apart in the call.
    ([$($meta:tt)*] $vis:vis $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) $out:ty, $err:ty, $body:block) => {
        $crate::__job_fn! { @item [$($meta)*] $vis $name (($($ty,)*)) (($($arg,)*)) $out, $err, $body }
    };
    (@item [$($meta:tt)*] $vis:vis $name:ident ($input:ty) ($pat:pat) $out:ty, $err:ty, $body:block) => {
        $($meta)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        $vis struct $name;

        impl $name {
            /// Calls the function directly (not through a pool); several
            /// arguments are one tuple.
            #[allow(dead_code)]
            $vis fn call(input: $input) -> ::core::result::Result<$out, $err> {
                <$name as $crate::job::JobFn>::call(input)
            }
        }

        impl $crate::job::JobFn for $name {
            type Input = $input;
            type Output = $out;
            type Error = $err;
            const NAME: &'static str = stringify!($name);

            fn call($pat: $input) -> ::core::result::Result<$out, $err> $body
        }
    };
}
