//! `Pool::submit_fn` and `Pool::map_fn`: the pool's side of the short
//! way to a job ([`jobs!`](crate::jobs), `job::func`).

use super::{Map, Pool, SubmitError, Ticket};
use crate::job::{Call, JobFn};

/// The input of [`Pool::map_fn`], each item wrapped as its job.
pub type FnInputs<F, I> = std::iter::Map<I, fn(<F as JobFn>::Input) -> Call<F>>;

impl Pool {
    /// Submits one call of a [`jobs!`](crate::jobs) function: the short
    /// form of `submit(Call::<F>(input))`.
    #[allow(clippy::result_large_err)] // the Err gives the job back
    pub fn submit_fn<F: JobFn>(
        &self,
        _f: F,
        input: F::Input,
    ) -> Result<Ticket<Call<F>>, SubmitError<Call<F>>> {
        self.submit(Call::<F>(input))
    }

    /// Runs a [`jobs!`](crate::jobs) function over `inputs`, yielding the
    /// results in input order: [`map`](Self::map) with each input as its
    /// job.
    pub fn map_fn<F: JobFn, I: IntoIterator<Item = F::Input>>(
        &self,
        _f: F,
        inputs: I,
    ) -> Map<'_, Call<F>, FnInputs<F, I::IntoIter>> {
        self.map(inputs.into_iter().map(Call::<F> as fn(F::Input) -> Call<F>))
    }

    /// Like [`map_fn`](Self::map_fn), but yields results as they finish.
    pub fn map_fn_unordered<F: JobFn, I: IntoIterator<Item = F::Input>>(
        &self,
        _f: F,
        inputs: I,
    ) -> Map<'_, Call<F>, FnInputs<F, I::IntoIter>> {
        self.map_unordered(inputs.into_iter().map(Call::<F> as fn(F::Input) -> Call<F>))
    }
}
